"""A reader for WAV headers (RIFF, big-endian RIFX, RF64) that libsndfile refuses."""

from __future__ import annotations

import struct
from dataclasses import dataclass


class RiffError(ValueError):
    pass


@dataclass(frozen=True)
class RiffInfo:
    frames: int
    sample_rate: int
    channels: int
    bits: int
    format_tag: int


def read_riff(data: bytes) -> RiffInfo:
    """Frames = data size / block align, from the chunks of a WAV file."""
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise RiffError("not a RIFF/WAVE file")
    endian = ">" if data[:4] == b"RIFX" else "<"
    rf64 = data[:4] == b"RF64"
    pos = 12
    fmt: tuple[int, int, int, int, int] | None = None
    data_size: int | None = None
    ds64_data: int | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack(endian + "I", data[pos + 4:pos + 8])
        body = pos + 8
        if chunk_id == b"ds64" and size >= 16:
            (ds64_data,) = struct.unpack("<Q", data[body + 8:body + 16])
        elif chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise RiffError("fmt chunk too short")
            tag, channels, rate, _byte_rate, align, bits = struct.unpack(endian + "HHIIHH", data[body:body + 16])
            fmt = (tag, channels, rate, align, bits)
        elif chunk_id == b"data":
            data_size = ds64_data if rf64 and size == 0xFFFFFFFF and ds64_data is not None else size
            break
        pos = body + size + (size & 1)
    if fmt is None:
        raise RiffError("no fmt chunk")
    if data_size is None:
        raise RiffError("no data chunk")
    tag, channels, rate, align, bits = fmt
    if channels == 0 or rate == 0:
        raise RiffError("fmt chunk declares no channels or no sample rate")
    if align == 0:
        align = channels * ((bits + 7) // 8)
    if align == 0:
        raise RiffError("fmt chunk declares no block size")
    return RiffInfo(data_size // align, rate, channels, bits, tag)
