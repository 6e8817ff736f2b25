"""audio.speech without Ray: its worker (the real Silero VAD model) on speech made here, served from loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from actors import InvalidArgs, JobFailed, WorkerConfig, all_kinds
from actors.speech import RATE, WINDOW, Segmenter, SpeechSegments, SpeechSettings
from bench.speech_audio import repeated, silence, speech, variant
from server.config import Settings, SettingsError
from tests.audio_files import encode
from tests.helpers import Fixture, FixtureHTTP
from tests.unit.test_audio import loopback_only, serve

__all__ = ["loopback_only"]  # the fixture, used by every test here that downloads
TOLERANCE = 0.15  # seconds: each boundary found within this of the known one

KIND = all_kinds()["audio.speech"]
Spoken = tuple[Path, list[tuple[float, float]], Path]  # the speech file, where its phrases are, a work folder


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Spoken:
    workdir = tmp_path_factory.mktemp("speech")
    path, truth = speech(workdir)
    return path, truth, workdir


@pytest.fixture(scope="module")
def worker() -> SpeechSegments:
    found = SpeechSegments(WorkerConfig(allow_private_urls=True, fetch_timeout=10.0))
    found.warmup()
    return found


def run(worker: SpeechSegments, url: str, **args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job's progress items and its result, as the actor would stream them."""
    progress = []
    steps = worker.run(KIND.check({"url": url, **args}))
    try:
        while True:
            progress.append(next(steps))
    except StopIteration as returned:
        return progress, returned.value


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "MP3"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_one_segment_per_phrase_each_boundary_within_tolerance(
        http: FixtureHTTP, spoken: Spoken, worker: SpeechSegments,
        rate: int, channels: int, fmt: str) -> None:
    path, truth, workdir = spoken
    progress, result = run(worker, serve(http, variant(path, workdir, rate, channels, fmt)))
    found = [(segment["start"], segment["end"]) for segment in result["segments"]]
    assert len(found) == len(truth), (found, truth)
    for (start, end), (known_start, known_end) in zip(found, truth, strict=True):
        assert abs(start - known_start) <= TOLERANCE and abs(end - known_end) <= TOLERANCE, (found, truth)
    assert result["speech_seconds"] == pytest.approx(sum(end - start for start, end in found), abs=0.01)
    assert result["duration"] == pytest.approx(truth[-1][1] + 0.5, abs=0.1)
    assert result["model"].startswith("silero-vad")
    streamed = [segment for item in progress for segment in item["segments"]]
    assert streamed == result["segments"][:len(streamed)], "progress sends each segment once, in order"


@pytest.mark.usefixtures("loopback_only")
def test_silence_gives_no_segment(http: FixtureHTTP, worker: SpeechSegments) -> None:
    _, result = run(worker, serve(http, silence(16000, 5.0)))
    assert result["segments"] == [] and result["speech_seconds"] == 0 and result["duration"] == 5.0


@pytest.mark.usefixtures("loopback_only")
def test_a_pure_tone_is_not_speech(http: FixtureHTTP, worker: SpeechSegments) -> None:
    """The README says what the model does with a 440 Hz tone: nothing (checked here)."""
    _, result = run(worker, serve(http, encode(5 * 44100, 44100, "WAV", "PCM_16")))
    assert result["segments"] == []


@pytest.mark.usefixtures("loopback_only")
def test_long_audio_streams_progress_as_it_goes(http: FixtureHTTP, spoken: Spoken, worker: SpeechSegments) -> None:
    path, _, workdir = spoken
    progress, result = run(worker, serve(http, repeated(path, workdir, 30).read_bytes()))
    assert len(progress) >= 2, "a few frames a second while it runs"
    done = [item["done_seconds"] for item in progress]
    assert done == sorted(done) and done[-1] <= result["duration"]
    streamed = [segment for item in progress for segment in item["segments"]]
    assert len(result["segments"]) == 3 * 30 and streamed == result["segments"][:len(streamed)]


@pytest.mark.usefixtures("loopback_only")
def test_what_is_not_audio_fails_with_a_reason(http: FixtureHTTP, worker: SpeechSegments) -> None:
    for body, code in ((b"<html><body>nope</body></html>", "not_audio"), (bytes(range(256)) * 40,
                                                                            "unsupported_format")):
        with pytest.raises(JobFailed) as caught:
            run(worker, serve(http, body))
        assert caught.value.code == code


def test_args_are_checked_by_the_schema_and_the_url_guard() -> None:
    assert KIND.check({"url": "http://127.0.0.1/a.wav", "threshold": 0.3}) == {
        "url": "http://127.0.0.1/a.wav", "threshold": 0.3}
    for bad, words in (({"url": "http://x/a.wav", "threshold": 1.5}, "threshold"),
                       ({"url": "http://x/a.wav", "min_silence_ms": -1}, "min_silence_ms"),
                       ({"url": "http://x/a.wav", "speed": 2}, "unknown args: speed"),
                       ({"url": "ftp://x/a.wav"}, "url")):
        with pytest.raises(InvalidArgs) as caught:
            KIND.check(bad)
        assert words in caught.value.message


def test_the_segmenter_follows_silero_rules() -> None:
    per_window = WINDOW / RATE
    segmenter = Segmenter(threshold=0.5, min_silence_ms=300, min_speech_ms=250, pad_ms=0)
    probabilities = [0.1] * 10 + [0.9] * 20 + [0.45] * 3 + [0.9] * 5 + [0.1] * 20 + [0.9] * 3 + [0.1] * 20
    closed = [found for p in probabilities if (found := segmenter.feed(p)) is not None]
    assert closed == [(10 * WINDOW, 38 * WINDOW)], "0.45 is within the hysteresis; a 3-window blip is too short"
    assert segmenter.end(len(probabilities) * WINDOW) is None
    still = Segmenter(threshold=0.5, min_silence_ms=300, min_speech_ms=0, pad_ms=30)
    for p in [0.9] * 20:
        still.feed(p)
    assert still.end(20 * WINDOW) == (0, 20 * WINDOW), "speech to the end is a segment, padded within the audio"
    assert per_window == 0.032


def test_the_kind_reads_its_own_settings_and_refuses_bad_ones(tmp_path: Path) -> None:
    settings = Settings.load([], environ={"AMI_SPEECH_THRESHOLD": "0.7", "AMI_SPEECH_MIN_SILENCE_MS": "500"})
    mine = settings.worker_config().settings_of(SpeechSettings)
    assert (mine.threshold, mine.min_silence_ms, mine.min_speech_ms) == (0.7, 500, 250)
    assert Settings.load(["--speech-threshold", "0.25"], environ={}).worker_config().settings_of(
        SpeechSettings).threshold == 0.25
    for environ, words in (({"AMI_SPEECH_THRESHOLD": "1.5"}, "AMI_SPEECH_THRESHOLD must be between 0 and 1"),
                           ({"AMI_SPEECH_MIN_SPEECH_MS": "lots"}, "AMI_SPEECH_MIN_SPEECH_MS: cannot use 'lots'")):
        with pytest.raises(SettingsError) as caught:
            Settings.load([], environ=environ)
        assert words in str(caught.value)


def test_help_lists_every_kinds_own_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.load(["--help"], environ={})
    text = capsys.readouterr().out
    for kind in all_kinds().values():
        for name in getattr(kind.settings, "__dataclass_fields__", {}).values():
            assert name.metadata["env"] in text


@pytest.mark.usefixtures("loopback_only")
def test_decoding_starts_before_the_download_ends(http: FixtureHTTP, spoken: Spoken, worker: SpeechSegments) -> None:
    path, _, workdir = spoken
    body = repeated(path, workdir, 10).read_bytes()
    release, rest_sent = threading.Event(), threading.Event()

    def half_then_wait(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:len(body) // 2])
        handler.wfile.flush()
        release.wait(30)
        handler.wfile.write(body[len(body) // 2:])
        rest_sent.set()

    steps = worker.run(KIND.check({"url": http.add("/speech/half-then-wait.wav", half_then_wait)}))
    first = next(steps)
    assert not rest_sent.is_set() and first["done_seconds"] > 0, "a frame came while half the file was held back"
    release.set()
    try:
        while True:
            next(steps)
    except StopIteration as returned:
        assert len(returned.value["segments"]) == 3 * 10


@pytest.mark.usefixtures("loopback_only")
def test_a_failed_or_broken_download_says_so(http: FixtureHTTP, spoken: Spoken, worker: SpeechSegments) -> None:
    path, _, _ = spoken
    body = path.read_bytes()

    def cut_short(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:len(body) // 3])
        handler.close_connection = True  # the connection closes: the promised rest never comes

    for url, code in ((http.add("/speech/missing.wav", Fixture(status=404, body=b"<html>no</html>")), "fetch_failed"),
                      (http.add("/speech/cut-short.wav", cut_short), "fetch_failed")):
        with pytest.raises(JobFailed) as caught:
            run(worker, url)
        assert caught.value.code == code, caught.value.message
