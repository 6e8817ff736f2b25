"""audio.length: the exact length of the audio at a URL, from its header where the format states it."""

from __future__ import annotations

import io
import os
import re
import tempfile
from typing import Any

from actors._base import InvalidArgs, JobFailed, JobKind, PoolSpec, WorkerConfig
from actors._fetch import Download, Fetcher, UrlGuard, check_url
from actors._headers import HeaderError, Length, aiff_length, flac_length, mp3_has_length_frame, sniff, wav_length

MAX_URL = 4096
PREFIX_BYTES = 256 * 1024  # a range request of this much holds the header of every format read here
HEADER_READERS = {"WAV": wav_length, "FLAC": flac_length, "AIFF": aiff_length}
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+)")


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


def _result(length: Length, method: str) -> dict[str, Any]:
    if length.frames <= 0:
        raise JobFailed("not_audio", "the file holds no audio frames")
    if length.sample_rate <= 0 or length.channels <= 0:
        raise JobFailed("not_audio", "the file declares no sample rate or no channels")
    return {
        "duration": length.frames / length.sample_rate,
        "frames": length.frames,
        "sample_rate": length.sample_rate,
        "channels": length.channels,
        "format": length.format,
        "method": method,
    }


def from_header(data: bytes, total: int) -> dict[str, Any] | None:
    """The length from the first bytes of a file of `total` bytes, where its header states it."""
    reader = HEADER_READERS.get(sniff(data[:4096]) or "")
    if reader is None:
        return None
    try:
        found = reader(data, total)
    except HeaderError as exc:
        raise JobFailed("not_audio", str(exc)) from None
    return None if found is None else _result(found, "header")


def measure(body: bytes) -> dict[str, Any]:
    """The length of a whole audio file held in memory: from its header if possible, else by decoding."""
    if not body or (len(body) <= 4096 and not body.strip(b"\x00 \t\r\n")):
        raise JobFailed("not_audio", "the URL returned an empty body")
    if _looks_like_text(body[:1024]):
        raise JobFailed("not_audio", "the URL returned a text/HTML document, not audio")
    found = from_header(body, len(body))
    if found is not None:
        return found
    container = sniff(body[:4096])
    if container != "MP3" or mp3_has_length_frame(body[:8192]):
        info = _soundfile_info(body)
        if info is not None:
            return _result(info, "header")
    return _decode(body, container)


def _soundfile_info(body: bytes) -> Length | None:
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(body))
    except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError):
        return None
    if info.frames <= 0 or info.samplerate <= 0:
        return None
    return Length(int(info.frames), int(info.samplerate), int(info.channels), str(info.format))


def _decode(body: bytes, container: str | None) -> dict[str, Any]:
    import librosa

    fd, path = tempfile.mkstemp(prefix="ami-audio-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        try:
            samples, rate = librosa.load(path, sr=None, mono=False)
        except Exception as exc:
            if container is None:
                raise JobFailed("unsupported_format", "not an audio format this service reads") from None
            raise JobFailed("not_audio", f"the {container} file cannot be decoded ({type(exc).__name__})") from None
    finally:
        os.unlink(path)
    channels = 1 if samples.ndim == 1 else int(samples.shape[0])
    return _result(Length(int(samples.shape[-1]), int(rate), channels, container or "UNKNOWN"), "decode")


def _total_size(download: Download) -> int | None:
    match = CONTENT_RANGE.match(download.headers.get("Content-Range", ""))
    return int(match.group(3)) if download.status == 206 and match else None


def _check_status(download: Download) -> None:
    if download.status >= 400:
        raise JobFailed("fetch_failed", f"HTTP {download.status} from {download.url}")


class AudioLength:
    """Measures the audio at a URL, downloading only the header where that is enough."""

    def __init__(self, config: WorkerConfig, guard: UrlGuard | None = None) -> None:
        guard = guard or UrlGuard(allow_private=config.allow_private_urls)
        self.fetcher = Fetcher(guard, timeout=config.fetch_timeout, max_bytes=config.max_audio_bytes)

    def warmup(self) -> None:
        # librosa's first decode compiles numba code (~12 s); pay it here, not in a user's job.
        import librosa
        import numpy as np
        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, np.zeros(800, dtype="float32"), 8000, format="WAV")
        librosa.load(io.BytesIO(buffer.getvalue()), sr=None)

    def run(self, args: dict[str, Any]) -> dict[str, Any]:
        url = args["url"]
        first = self.fetcher.get(url, headers={"Range": f"bytes=0-{PREFIX_BYTES - 1}"})
        if first.status == 416:  # an empty file has no byte 0
            first = self.fetcher.get(url)
        _check_status(first)
        total = _total_size(first)
        downloaded = len(first.body)
        if total is not None and total > self.fetcher.max_bytes:
            raise JobFailed("too_large", f"{url} is {total} bytes; the limit is {self.fetcher.max_bytes}")
        if total is not None and downloaded < total:
            found = from_header(first.body, total)
            if found is not None:
                return {**found, "bytes": downloaded}
            whole = self.fetcher.get(url)
            _check_status(whole)
            body, downloaded = whole.body, downloaded + len(whole.body)
        else:
            body = first.body
        return {**measure(body), "bytes": downloaded}


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
