"""Speech made here, with known boundaries: espeak-ng phrases trimmed of espeak's own leading and trailing silence
(sox), joined by sox silences of known lengths, then resampled, remixed and encoded as a test asks."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile

PHRASES = ("The quick brown fox jumps over the lazy dog", "Hello, this is a test of speech detection",
           "Numbers one two three four five")
GAPS = (0.7, 1.0, 2.5, 0.5)  # seconds of silence: before the first phrase, between phrases, after the last
TRIM = ["silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse"]


def _sox(*args: str | Path) -> None:
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True, timeout=60)


def speech(workdir: Path) -> tuple[Path, list[tuple[float, float]]]:
    """A WAV of the phrases between the gaps (22,050 Hz mono, as espeak-ng speaks), and where each phrase is."""
    joined = workdir / "speech.wav"
    truth_file = workdir / "speech.truth"
    if joined.exists() and truth_file.exists():
        return joined, [tuple(map(float, line.split())) for line in truth_file.read_text().splitlines()]  # type: ignore[misc]
    parts: list[Path] = []
    truth: list[tuple[float, float]] = []
    at = 0.0
    for index, phrase in enumerate(PHRASES):
        gap = workdir / f"gap{index}.wav"
        _sox("-n", "-r", "22050", "-c", "1", "-b", "16", gap, "trim", "0", str(GAPS[index]))
        raw, trimmed = workdir / f"raw{index}.wav", workdir / f"phrase{index}.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), phrase], check=True, capture_output=True, timeout=60)
        _sox(raw, trimmed, *TRIM)
        seconds = soundfile.info(str(trimmed)).duration
        at += GAPS[index]
        truth.append((at, at + seconds))
        at += seconds
        parts += [gap, trimmed]
    tail = workdir / "tail.wav"
    _sox("-n", "-r", "22050", "-c", "1", "-b", "16", tail, "trim", "0", str(GAPS[-1]))
    _sox(*parts, tail, joined)
    truth_file.write_text("".join(f"{start} {end}\n" for start, end in truth))
    return joined, truth


def variant(source: Path, workdir: Path, rate: int, channels: int, fmt: str) -> bytes:
    """`source` at `rate` Hz with `channels` channels, encoded as WAV, FLAC or MP3 (soundfile writes all three)."""
    converted = workdir / f"v-{rate}-{channels}.wav"
    if not converted.exists():
        _sox(source, "-r", str(rate), "-c", str(channels), converted)
    data, got_rate = soundfile.read(str(converted), dtype="float32", always_2d=True)
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": "MPEG_LAYER_III"}[fmt]
    buffer = io.BytesIO()
    soundfile.write(buffer, data, got_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def repeated(source: Path, workdir: Path, times: int) -> Path:
    """`source` `times` times over, one file."""
    target = workdir / f"repeated-{times}.wav"
    if not target.exists():
        _sox(*([source] * times), target)
    return target


def silence(rate: int, seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(rate * seconds), dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
