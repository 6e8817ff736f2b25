"""audio.length: the exact length of the audio at a URL, from its header where the format states it."""

from __future__ import annotations

import re
import tempfile
from typing import IO, Any

from actors._base import InvalidArgs, JobErrorCode, JobFailed, JobKind, PoolSpec, WorkerConfig
from actors._fetch import Download, Fetcher, UrlGuard, check_url
from actors._headers import (
    HeaderError,
    Length,
    Overclaimed,
    aiff_length,
    flac_length,
    mp3_has_length_frame,
    mpeg_length,
    sniff,
    wav_length,
)

MAX_URL = 4096
PREFIX_BYTES = 256 * 1024  # a range request of this much holds the header of every format read here
HEADER_READERS = {"WAV": wav_length, "FLAC": flac_length, "AIFF": aiff_length}
CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+)")
UNKNOWN_FRAMES = 1 << 62  # libsndfile's SF_COUNT_MAX and anything near it is "unknown", never a length
DECODE_BLOCK = 64 * 1024  # frames decoded at a time when only decoding can tell the length
URL_ARG = {"type": "string", "format": "uri", "description": "an http(s) URL", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
           "maxLength": MAX_URL}  # the schema of an audio URL arg, for every kind that takes one


def url_schema(**more: dict[str, Any]) -> dict[str, Any]:
    """The args schema of a kind that takes one audio URL, and the optional args in `more`."""
    return {"type": "object", "properties": {"url": URL_ARG, **more}, "required": ["url"],
            "additionalProperties": False}


def url_form(title: str, button: str, label: str) -> dict[str, Any]:
    """The page's form of a kind that takes one audio URL."""
    return {"title": title, "button": button, "fields": [
        {"arg": "url", "label": label, "input": "url", "placeholder": "https://example.com/speech.wav"}]}


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


def looks_like_text(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<", b"{", b"[")) or b"<html" in head[:1024].lower()


def _result(length: Length, method: str) -> dict[str, Any]:
    if length.frames <= 0:
        raise JobFailed(JobErrorCode.NOT_AUDIO, "the file holds no audio frames")
    if length.sample_rate <= 0 or length.channels <= 0:
        raise JobFailed(JobErrorCode.NOT_AUDIO, "the file declares no sample rate or no channels")
    result: dict[str, Any] = {
        "duration": length.frames / length.sample_rate,
        "frames": length.frames,
        "sample_rate": length.sample_rate,
        "channels": length.channels,
        "format": length.format,
        "method": method,
    }
    if length.truncated:
        result["truncated"] = True
    return result


def from_header(data: bytes, total: int) -> dict[str, Any] | None:
    """The length from the first bytes of a file of `total` bytes, where its header states it."""
    reader = HEADER_READERS.get(sniff(data[:4096]) or "")
    if reader is None:
        return None
    try:
        found = reader(data, total)
    except HeaderError as exc:
        raise JobFailed(JobErrorCode.NOT_AUDIO, str(exc)) from None
    return None if found is None else _result(found, "header")


def _claimed(data: bytes, total: int) -> int | None:
    """The frames a header claims beyond what the file can hold, or None when its claim is believable."""
    reader = HEADER_READERS.get(sniff(data[:4096]) or "")
    try:
        if reader is not None:
            reader(data, total)
    except Overclaimed as exc:
        return exc.claimed
    except HeaderError:
        return None
    return None


def measure(body: bytes) -> dict[str, Any]:
    """The length of a whole audio file held in memory (tests, benchmarks): see `measure_file`."""
    with tempfile.NamedTemporaryFile(prefix="ami-audio-") as spool:
        spool.write(body)
        spool.flush()
        return measure_file(spool.name, body[:PREFIX_BYTES], len(body))


def measure_file(path: str, head: bytes, size: int) -> dict[str, Any]:
    """The length of the audio file at `path` (`size` bytes, starting with `head`), in bounded memory.

    From its header where the format states the length; an MP3 without a Xing/VBRI frame by counting its
    frames; anything else libsndfile reads by decoding it in blocks and counting. Never the whole file
    in memory, decoded or not.
    """
    if not size or (size <= 4096 and not head.strip(b"\x00 \t\r\n")):
        raise JobFailed(JobErrorCode.NOT_AUDIO, "the URL returned an empty body")
    if looks_like_text(head[:1024]):
        raise JobFailed(JobErrorCode.NOT_AUDIO, "the URL returned a text/HTML document, not audio")
    claimed = _claimed(head, size)
    if claimed is not None:  # never the header's word (nor libsndfile's, which reads the same header): decode
        decoded = _decode(path, sniff(head[:4096]))
        if decoded["frames"] < claimed:
            decoded["truncated"] = True
        return decoded
    found = from_header(head, size)
    if found is not None:
        return found
    container = sniff(head[:4096])
    if container == "MP3" and not mp3_has_length_frame(head[:8192]):
        with open(path, "rb") as stream:
            counted = mpeg_length(stream)
        if counted is None:
            raise JobFailed(JobErrorCode.NOT_AUDIO, "the MP3 file holds no MPEG audio frames")
        return _result(counted, "scan")
    info = _soundfile_info(path)
    if info is not None:
        return _result(info, "header")
    return _decode(path, container)


def _soundfile_info(path: str) -> Length | None:
    """libsndfile's length from the header, when it states one (not "unknown", not empty)."""
    import soundfile

    try:
        info = soundfile.info(path)
    except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError):
        return None
    if not 0 < info.frames < UNKNOWN_FRAMES or info.samplerate <= 0:
        return None  # libsndfile says SF_COUNT_MAX where a header calls the length unknown
    return Length(int(info.frames), int(info.samplerate), int(info.channels), str(info.format))


def _decode(path: str, container: str | None) -> dict[str, Any]:
    """Count frames by decoding in blocks: memory stays one block, whatever the duration.

    The raw `sf_readf_short`, because soundfile's own reads seek after every block, and libsndfile
    cannot seek in a FLAC whose length is unknown, the very file that has to be decoded to be measured.
    """
    import soundfile
    from soundfile import _ffi, _snd

    try:
        with soundfile.SoundFile(path) as audio:
            block = _ffi.new("short[]", DECODE_BLOCK * audio.channels)
            frames = 0
            while (got := _snd.sf_readf_short(audio._file, block, DECODE_BLOCK)) > 0:
                frames += got
            if _snd.sf_error(audio._file):
                raise RuntimeError(_ffi.string(_snd.sf_strerror(audio._file)).decode(errors="replace"))
            rate, channels = audio.samplerate, audio.channels
    except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError) as exc:
        if container is None:
            raise JobFailed(JobErrorCode.UNSUPPORTED_FORMAT, "not an audio format this service reads") from None
        message = f"the {container} file cannot be decoded ({type(exc).__name__})"
        raise JobFailed(JobErrorCode.NOT_AUDIO, message) from None
    return _result(Length(frames, int(rate), int(channels), container or "UNKNOWN"), "decode")


def _total_size(download: Download) -> int | None:
    match = CONTENT_RANGE.match(download.headers.get("Content-Range", ""))
    return int(match.group(3)) if download.status == 206 and match else None


def _check_status(download: Download) -> None:
    if download.status >= 400:
        raise JobFailed(JobErrorCode.FETCH_FAILED, f"HTTP {download.status} from {download.url}")


class AudioLength:
    """Measures the audio at a URL, downloading only the header where that is enough.

    Whatever is downloaded goes to a temporary file, never whole into memory.
    """

    def __init__(self, config: WorkerConfig, guard: UrlGuard | None = None) -> None:
        guard = guard or UrlGuard(allow_private=config.allow_private_urls)
        self.fetcher = Fetcher(guard, timeout=config.fetch_timeout, max_bytes=config.max_audio_bytes)

    def run(self, args: dict[str, Any]) -> dict[str, Any]:
        url = args["url"]
        with tempfile.NamedTemporaryFile(prefix="ami-audio-") as spool:
            first = self._get(url, spool, {"Range": f"bytes=0-{PREFIX_BYTES - 1}"})
            if first.status == 416:  # an empty file has no byte 0
                first = self._get(url, spool)
            _check_status(first)
            total = _total_size(first)
            downloaded = first.size
            if total is not None and total > self.fetcher.max_bytes:
                message = f"{url} is {total} bytes; the limit is {self.fetcher.max_bytes}"
                raise JobFailed(JobErrorCode.TOO_LARGE, message)
            whole = first
            if total is not None and downloaded < total:
                found = from_header(first.body, total)
                if found is not None:
                    return {**found, "bytes": downloaded}
                whole = self._get(url, spool)
                _check_status(whole)
                downloaded += whole.size
            spool.flush()
            return {**measure_file(spool.name, whole.body, whole.size), "bytes": downloaded}

    def _get(self, url: str, spool: IO[bytes], headers: dict[str, str] | None = None) -> Download:
        spool.seek(0)
        spool.truncate()
        return self.fetcher.get(url, headers=headers, into=spool, keep=PREFIX_BYTES)


KIND = JobKind(
    name="audio.length",
    actor_name="audio",
    description="The exact length of the audio file at an http(s) URL.",
    schema=url_schema(),
    validate=validate,
    worker=AudioLength,
    pool=PoolSpec(size=1, max_concurrency=16),  # downloads wait on the network: stuck ones must not starve others
    example={"url": "https://example.com/audio.wav"},
    shortcut=("audio", "url", "length of the audio at <url>"),
    form=url_form("Audio length", "Measure", "Audio file URL"),
)
