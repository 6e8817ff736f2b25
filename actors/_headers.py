"""Exact audio lengths without decoding: from headers (WAV, RIFX, RF64, FLAC, AIFF) or by scanning MPEG frames.

Each header reader takes the first bytes of a file (all of it, or a prefix fetched with a range request)
and the file's total size, and returns None when its header does not settle the length exactly. Where
a header contradicts itself or the file, the answer is libsndfile's: its frame width, and the audio
that is there when the file holds less than announced (`truncated`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO


class HeaderError(ValueError):
    """The header is broken or contradicts the file's size: the file is not usable audio."""


class Overclaimed(ValueError):
    """The header claims more audio than a file of its size can hold: decode it and report what is there."""

    def __init__(self, claimed: int, most: int) -> None:
        super().__init__(f"the header claims {claimed} frames; a file of this size holds at most {most}")
        self.claimed = claimed


@dataclass(frozen=True)
class Length:
    frames: int
    sample_rate: int
    channels: int
    format: str
    truncated: bool = False  # the file holds less audio than its header announced


# WAVE_FORMAT tags whose block align is exactly one frame (PCM, IEEE float, A-law, u-law).
FRAME_ALIGNED_TAGS = {0x0001, 0x0003, 0x0006, 0x0007}
EXTENSIBLE = 0xFFFE
STREAMING_SIZES = {0, 0xFFFFFFFF}  # written by recorders that never went back to fix the header
FLAC_MAX_BLOCK = 65535  # samples in one FLAC frame, at most
FLAC_MIN_FRAME = 8  # bytes of a FLAC frame, at least, besides a byte per channel: header (6) and CRC-16 (2)


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
            # libsndfile's frame width: channels x whole bytes per sample; a block align that disagrees is a
            # writer's mistake, and the data chunk's bytes are what is there.
            width = channels * ((bits + 7) // 8) or align
            if width == 0:
                raise HeaderError("the WAV header declares no block size")
            if data[:4] == b"RF64" and size == 0xFFFFFFFF and ds64_data is not None:
                size = ds64_data
            elif size in STREAMING_SIZES:
                size = total - body  # the audio runs to the end of the file
            present = max(total - body, 0)
            if size > present:
                return Length(present // width, rate, channels, "WAV", truncated=True)
            return Length(size // width, rate, channels, "WAV")
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
    # A FLAC frame holds at most 65,535 samples and takes at least FLAC_MIN_FRAME bytes (its header, a byte or two
    # per channel's constant subframe, its CRC): a count beyond what the file's bytes can hold is a lie.
    most = ((total - start - 42) // (FLAC_MIN_FRAME + channels) + 1) * FLAC_MAX_BLOCK
    if frames > most:
        raise Overclaimed(frames, most)
    return Length(frames, rate, channels, "FLAC")


def _extended(raw: bytes) -> float:
    """An IEEE 754 80-bit extended float, as AIFF stores its sample rate."""
    exponent, mantissa = struct.unpack(">HQ", raw)
    sign = -1 if exponent & 0x8000 else 1
    exponent &= 0x7FFF
    if exponent == 0 and mantissa == 0:
        return 0.0
    return float(sign * mantissa * 2.0 ** (exponent - 16383 - 63))


AIFC_PCM = {b"NONE", b"twos", b"sowt", b"fl32", b"FL32", b"fl64", b"FL64", b"in24", b"in32", b"raw "}


def aiff_length(data: bytes, total: int) -> Length | None:
    pos, comm, width, sound = 12, None, 0, -1
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4:pos + 8])
        body = pos + 8
        if chunk_id == b"COMM" and size >= 18 and body + 18 <= len(data):
            channels, frames, bits = struct.unpack(">HIH", data[body:body + 8])
            rate = _extended(data[body + 8:body + 18])
            if channels == 0 or rate <= 0 or rate != int(rate):
                raise HeaderError("the AIFF COMM chunk declares no channels or an unusable sample rate")
            comm = Length(frames, int(rate), channels, "AIFF")
            compression = data[body + 18:body + 22] if data[8:12] == b"AIFC" and size >= 22 else b"NONE"
            if compression in AIFC_PCM:
                width = channels * (8 if compression in (b"fl64", b"FL64") else
                                    4 if compression in (b"fl32", b"FL32") else (bits + 7) // 8)
        elif chunk_id == b"SSND":
            sound = max(min(size, total - body) - 8, 0)  # the sound bytes there, after offset and block size
            if body + size > total and not width:
                raise HeaderError("the file is truncated: the AIFF sound data runs past its end")
        if comm is not None and sound >= 0:
            if width and comm.frames * width > sound:  # less sound than COMM announces: count what is there
                return Length(sound // width, comm.sample_rate, comm.channels, "AIFF", truncated=True)
            return comm
        pos = body + size + (size & 1)
    return None


# MPEG audio: kbit/s by (version, layer) and bitrate index; sample rates by version. Version 3 is MPEG-1,
# 2 MPEG-2, 0 MPEG-2.5; layer 3 is Layer I, 2 Layer II, 1 Layer III.
_V1 = {3: (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
       2: (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
       1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)}
_V2 = {3: (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
       2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
       1: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
SCAN_CHUNK = 1 << 20
MAX_GAP = 64 * 1024  # bytes without a frame after which the audio is taken to have ended (tags, junk)


def mpeg_frame(header: bytes) -> tuple[int, int, int, int] | None:
    """(bytes, samples, sample rate, channels) of the MPEG audio frame whose 4-byte header this is, or None."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate_index, rate_index, padding = header[2] >> 4, (header[2] >> 2) & 3, (header[2] >> 1) & 1
    if version == 1 or layer == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or free format (no stated frame size)
    bitrate = (_V1 if version == 3 else _V2)[layer][bitrate_index] * 1000
    rate = _RATES[version][rate_index]
    channels = 1 if header[3] >> 6 == 3 else 2
    if layer == 3:
        return (12 * bitrate // rate + padding) * 4, 384, rate, channels
    if layer == 2 or version == 3:
        return 144 * bitrate // rate + padding, 1152, rate, channels
    return 72 * bitrate // rate + padding, 576, rate, channels


def mpeg_length(stream: IO[bytes]) -> Length | None:
    """Frames of an MPEG audio file (no Xing/VBRI header) counted frame by frame: what a decoder outputs.

    Reads the file in 1 MiB pieces, so memory stays small whatever its duration. A frame is taken where
    the previous one ends; after junk, only where a second frame follows it at the same sample rate.
    """
    stream.seek(0)
    start = _id3_size(stream.read(10 + 4))
    stream.seek(start)
    buffer, at = stream.read(SCAN_CHUNK), 0  # buffer[at] is the next byte to look at
    samples, rate, channels, chained, gap = 0, 0, 0, False, 0
    while True:
        if at + 8 > len(buffer):
            more = stream.read(SCAN_CHUNK)
            buffer, at = buffer[at:] + more, 0
            if len(buffer) < 4:
                break
        frame = mpeg_frame(buffer[at:at + 4])
        if frame is not None and not chained and not _starts_run(stream, buffer, at, frame):
            frame = None
        if frame is None or (rate and frame[2] != rate):
            chained = False
            gap += 1
            if gap > MAX_GAP:
                break
            found = buffer.find(b"\xff", at + 1)
            gap += (found if found >= 0 else len(buffer)) - at - 1
            at = found if found >= 0 else len(buffer)
            continue
        size, count, rate, channels = frame
        samples += count
        at += size
        chained, gap = True, 0
    return Length(samples, rate, channels, "MP3") if samples else None


def _starts_run(stream: IO[bytes], buffer: bytes, at: int, frame: tuple[int, int, int, int]) -> bool:
    """A frame found after junk counts only if another follows it at the same rate (or the file ends)."""
    following = mpeg_frame(_peek(stream, buffer, at + frame[0]))
    if following is None:
        return at + frame[0] >= len(buffer) + _remaining(stream)
    return following[2] == frame[2]


def _remaining(stream: IO[bytes]) -> int:
    here = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(here)
    return end - here


def _peek(stream: IO[bytes], buffer: bytes, offset: int) -> bytes:
    """Four bytes at `offset` of the buffer, reading past its end from the stream without consuming."""
    if offset + 4 <= len(buffer):
        return buffer[offset:offset + 4]
    here = stream.tell()
    stream.seek(here + offset - len(buffer))
    head = stream.read(4)
    stream.seek(here)
    return head
