"""audio.length: the exact length of the audio at a URL."""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

from actors._base import InvalidArgs, JobFailed, JobKind, PoolSpec, WorkerConfig
from actors._fetch import Fetcher, UrlGuard, check_url
from actors._riff import RiffError, read_riff

MAX_URL = 4096


def validate(args: dict[str, Any]) -> dict[str, Any]:
    url = args.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgs("args.url must be an http(s) URL string")
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidArgs(f"args.url is longer than {MAX_URL} characters")
    try:
        check_url(url)
    except JobFailed as exc:
        raise InvalidArgs(exc.message) from None
    unknown = set(args) - {"url"}
    if unknown:
        raise InvalidArgs(f"unknown args: {', '.join(sorted(unknown))}")
    return {"url": url}


def _looks_like_text(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<", b"{", b"[")) or b"<html" in head[:1024].lower()


def measure(body: bytes) -> dict[str, Any]:
    """Frames, rate, channels and format of an audio file held in memory."""
    if not body:
        raise JobFailed("not_audio", "the URL returned an empty body")
    if _looks_like_text(body[:1024]):
        raise JobFailed("not_audio", "the URL returned a text/HTML document, not audio")
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(body))
        if info.frames > 0 and info.samplerate > 0 and info.format != "MPEG":
            return _result(info.frames, info.samplerate, info.channels, info.format, "header")
    except (RuntimeError, soundfile.LibsndfileError):
        pass
    if body[:4] in (b"RIFF", b"RIFX", b"RF64"):
        try:
            riff = read_riff(body)
        except RiffError as exc:
            raise JobFailed("not_audio", f"broken WAV file: {exc}") from None
        return _result(riff.frames, riff.sample_rate, riff.channels, "WAV", "header")
    return _decode(body)


def _decode(body: bytes) -> dict[str, Any]:
    import librosa

    fd, path = tempfile.mkstemp(prefix="ami-audio-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        try:
            samples, rate = librosa.load(path, sr=None, mono=False)
        except Exception as exc:
            raise JobFailed("unsupported_format", f"not a readable audio format ({type(exc).__name__})") from None
    finally:
        os.unlink(path)
    frames = int(samples.shape[-1])
    if frames == 0:
        raise JobFailed("not_audio", "the file holds no audio frames")
    channels = 1 if samples.ndim == 1 else int(samples.shape[0])
    return _result(frames, int(rate), channels, _guess_format(body), "decode")


def _guess_format(body: bytes) -> str:
    if body[:3] == b"ID3" or (len(body) > 1 and body[0] == 0xFF and body[1] & 0xE0 == 0xE0):
        return "MP3"
    return "UNKNOWN"


def _result(frames: int, rate: int, channels: int, fmt: str, method: str) -> dict[str, Any]:
    if rate <= 0 or channels <= 0:
        raise JobFailed("not_audio", "the file declares no sample rate or channels")
    return {
        "duration": frames / rate,
        "frames": int(frames),
        "sample_rate": int(rate),
        "channels": int(channels),
        "format": fmt,
        "method": method,
    }


class AudioLength:
    """Downloads the audio at a URL and measures it."""

    def __init__(self, config: WorkerConfig) -> None:
        guard = UrlGuard(allow_private=config.allow_private_urls)
        self.fetcher = Fetcher(guard, timeout=config.fetch_timeout, max_bytes=config.max_audio_bytes)

    def warmup(self) -> None:
        # librosa's first decode compiles numba code (~12 s); pay it here, not in a user's job.
        import numpy as np
        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, np.zeros(800, dtype="float32"), 8000, format="WAV")
        import librosa

        librosa.load(io.BytesIO(buffer.getvalue()), sr=None)

    def run(self, args: dict[str, Any]) -> dict[str, Any]:
        download = self.fetcher.get(args["url"])
        if download.status >= 400:
            raise JobFailed("fetch_failed", f"HTTP {download.status} from {download.url}")
        result = measure(download.body)
        result["bytes"] = len(download.body)
        return result


KIND = JobKind(
    name="audio.length",
    actor_name="audio",
    description="The exact length of the audio file at an http(s) URL.",
    schema={
        "type": "object",
        "properties": {"url": {"type": "string", "format": "uri", "pattern": "^https?://", "maxLength": MAX_URL}},
        "required": ["url"],
        "additionalProperties": False,
    },
    validate=validate,
    worker=AudioLength,
    pool=PoolSpec(size=1, max_concurrency=4),
    example={"url": "https://example.com/audio.wav"},
)
