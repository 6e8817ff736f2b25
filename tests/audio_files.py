"""Audio files with known frame counts, generated in memory."""

from __future__ import annotations

import io

import numpy as np
import soundfile


def tone(frames: int, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(frames) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32")
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def encode(frames: int, rate: int, fmt: str, subtype: str | None = None, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(frames, rate, channels), rate, format=fmt, subtype=subtype)
    return buffer.getvalue()
