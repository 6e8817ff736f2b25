"""Exact audio lengths read from file headers, without decoding: WAV (RIFF, RIFX, RF64), FLAC, AIFF.

Each reader takes the first bytes of a file (all of it, or a prefix fetched with a range request)
and the file's total size, and returns None when its header does not settle the length exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class HeaderError(ValueError):
    """The header is broken or contradicts the file's size: the file is not usable audio."""


@dataclass(frozen=True)
class Length:
    frames: int
    sample_rate: int
    channels: int
    format: str


# WAVE_FORMAT tags whose block align is exactly one frame (PCM, IEEE float, A-law, u-law).
FRAME_ALIGNED_TAGS = {0x0001, 0x0003, 0x0006, 0x0007}
EXTENSIBLE = 0xFFFE
STREAMING_SIZES = {0, 0xFFFFFFFF}  # written by recorders that never went back to fix the header


def sniff(head: bytes) -> str | None:
    """The container a file's first bytes announce."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC" or (head[:3] == b"ID3" and b"fLaC" in head[:_id3_size(head) + 4]):
        return "FLAC"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[:4] == b"OggS":
        return "OGG"
    start = _id3_size(head)
    if head[:3] == b"ID3" or (len(head) > start + 1 and head[start] == 0xFF and head[start + 1] & 0xE0 == 0xE0):
        return "MP3"
    return None


def _id3_size(head: bytes) -> int:
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = 0
    for byte in head[6:10]:
        size = (size << 7) | (byte & 0x7F)
    return 10 + size + (10 if head[5] & 0x10 else 0)


def mp3_has_length_frame(head: bytes) -> bool:
    """True when the first MPEG frame is a Xing/Info/VBRI frame, which states the frame count."""
    start = _id3_size(head)
    first = head[start:start + 256]
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


def wav_length(data: bytes, total: int) -> Length | None:
    """Frames = data size / block align, from the chunks of a WAV file of `total` bytes."""
    endian = ">" if data[:4] == b"RIFX" else "<"
    pos, fmt, ds64_data = 12, None, None
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack(endian + "I", data[pos + 4:pos + 8])
        body = pos + 8
        if chunk_id == b"ds64" and size >= 16 and body + 16 <= len(data):
            (ds64_data,) = struct.unpack("<Q", data[body + 8:body + 16])
        elif chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise HeaderError("the WAV fmt chunk is too short")
            tag, channels, rate, _, align, bits = struct.unpack(endian + "HHIIHH", data[body:body + 16])
            if tag == EXTENSIBLE and size >= 40 and body + 26 <= len(data):
                (tag,) = struct.unpack(endian + "H", data[body + 24:body + 26])
            fmt = (tag, channels, rate, align, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise HeaderError("the WAV data chunk comes before its fmt chunk")
            tag, channels, rate, align, bits = fmt
            if channels == 0 or rate == 0:
                raise HeaderError("the WAV header declares no channels or no sample rate")
            if tag not in FRAME_ALIGNED_TAGS:
                return None  # compressed (ADPCM, GSM, MP3-in-WAV...): frames are not bytes / block align
            align = align or channels * ((bits + 7) // 8)
            if align == 0:
                raise HeaderError("the WAV header declares no block size")
            if data[:4] == b"RF64" and size == 0xFFFFFFFF and ds64_data is not None:
                size = ds64_data
            elif size in STREAMING_SIZES:
                size = total - body  # the audio runs to the end of the file
            if body + size > total:
                raise HeaderError(f"the file is truncated: the WAV header announces {size} bytes of audio, "
                                  f"{max(total - body, 0)} are there")
            return Length(size // align, rate, channels, "WAV")
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if pos + 8 > total:
        raise HeaderError("the WAV file has no data chunk" if fmt else "the WAV file has no fmt chunk")
    return None  # the data chunk lies beyond the bytes we have


def flac_length(data: bytes, total: int) -> Length | None:
    start = data.find(b"fLaC", 0, _id3_size(data) + 4)
    block = data[start + 8:start + 8 + 34]
    if start < 0 or len(block) < 18 or data[start + 4] & 0x7F != 0:
        raise HeaderError("the FLAC file has no STREAMINFO block")
    (packed,) = struct.unpack(">Q", block[10:18])
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    frames = packed & 0xFFFFFFFFF
    if rate == 0:
        raise HeaderError("the FLAC STREAMINFO declares no sample rate")
    if frames == 0:
        return None  # "unknown": only decoding can tell
    if total < start + 42 + 16:
        raise HeaderError("the FLAC file is truncated")
    return Length(frames, rate, channels, "FLAC")


def _extended(raw: bytes) -> float:
    """An IEEE 754 80-bit extended float, as AIFF stores its sample rate."""
    exponent, mantissa = struct.unpack(">HQ", raw)
    sign = -1 if exponent & 0x8000 else 1
    exponent &= 0x7FFF
    if exponent == 0 and mantissa == 0:
        return 0.0
    return float(sign * mantissa * 2.0 ** (exponent - 16383 - 63))


def aiff_length(data: bytes, total: int) -> Length | None:
    pos, comm, sound = 12, None, False
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4:pos + 8])
        body = pos + 8
        if chunk_id == b"COMM" and size >= 18 and body + 18 <= len(data):
            channels, frames, _bits = struct.unpack(">HIH", data[body:body + 8])
            rate = _extended(data[body + 8:body + 18])
            if channels == 0 or rate <= 0 or rate != int(rate):
                raise HeaderError("the AIFF COMM chunk declares no channels or an unusable sample rate")
            comm = Length(frames, int(rate), channels, "AIFF")
        elif chunk_id == b"SSND":
            if body + size > total:
                raise HeaderError("the file is truncated: the AIFF sound data runs past its end")
            sound = True
        if comm is not None and sound:
            return comm
        pos = body + size + (size & 1)
    return None
