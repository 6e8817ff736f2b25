"""Hostile audio for tests and benchmarks: a long MP3 of silence, measured in a child process for its peak memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from actors._headers import mpeg_frame
from bench.servers import ROOT

RATE = 48000

# ru_maxrss outlives exec (a child starts with its parent's peak): read the kernel's VmHWM, reset first.
PROBE = """
import json, os, sys
from actors.audio import measure_file

def status(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))

path = sys.argv[1]
with open(path, 'rb') as f:
    head = f.read(256 * 1024)
import soundfile  # loaded before the baseline, as an actor has it loaded
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # the peak (VmHWM) starts again from the current RSS
before = status('VmRSS')
result = measure_file(path, head, os.path.getsize(path))
peak = status('VmHWM')
print(json.dumps({"frames": result["frames"], "method": result["method"], "grew_kib": peak - before,
                  "peak_kib": peak}))
"""


def silent_wav(frames: int = 8000, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of silence (one second by default)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(frames, dtype="int16"), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def silent_mp3(minutes: float) -> tuple[bytes, int]:
    """Stereo 48 kHz silence as an MP3 without a Xing frame (a decoder must count its frames), and its samples.

    Built by repeating one encoded frame from the middle of a short file, so an hour costs no encoding time.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((RATE * 3, 2), dtype="float32"), RATE, format="MP3", subtype="MPEG_LAYER_III")
    body = buffer.getvalue()
    frames, at = [], 0
    while (frame := mpeg_frame(body[at:at + 4])) is not None:
        frames.append((at, frame[0], frame[1]))
        at += frame[0]
    start, size, samples = frames[len(frames) // 2]
    count = int(minutes * 60 * RATE / samples)
    return body[start:start + size] * count, count * samples


def measure_in_child(path: Path) -> dict[str, Any]:
    """`measure_file` on `path` in a fresh interpreter: its result and how much its peak RSS grew (KiB)."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
