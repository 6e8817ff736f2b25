"""audio.length: exact lengths for real-world files, downloads that cannot be abused, failures named."""

from __future__ import annotations

import io
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import soundfile

from actors import JobFailed, WorkerConfig
from actors._fetch import UrlGuard, forbidden_reason
from actors.audio import PREFIX_BYTES, AudioLength, measure
from tests.audio_files import encode, tone
from tests.helpers import Fixture, FixtureHTTP

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A safety net under the URL guard: nothing in these tests may connect beyond loopback."""
    refused: list[str] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not ipaddress.ip_address(str(host).split("%")[0]).is_loopback:
            refused.append(str(host))
            raise ConnectionRefusedError(f"test safety net: {host} is not a loopback address")
        real(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield refused
    assert refused == [], "the guard let a connection through to a non-loopback address"


def worker(**config: object) -> AudioLength:
    settings = {"allow_private_urls": True, "fetch_timeout": 5.0, **config}
    return AudioLength(WorkerConfig(**settings))  # type: ignore[arg-type]


def serve(http: FixtureHTTP, body: bytes, ranges: bool = True, name: str = "") -> str:
    path = f"/file/{len(http.routes)}{name}"
    return http.add(path, Fixture(body=body, ranges=ranges))


# --- exact lengths ---------------------------------------------------------------------------------

WAV_FORMS = [
    ("WAV", "PCM_U8", 8000, 1, "little"),
    ("WAV", "PCM_16", 8000, 1, "little"),
    ("WAV", "PCM_24", 48000, 2, "little"),
    ("WAV", "PCM_32", 44100, 2, "little"),
    ("WAV", "FLOAT", 22050, 1, "little"),
    ("WAV", "DOUBLE", 16000, 2, "little"),
    ("WAV", "ULAW", 8000, 1, "little"),
    ("WAV", "ALAW", 8000, 1, "little"),
    ("WAV", "PCM_16", 48000, 6, "little"),
    ("WAV", "PCM_16", 8000, 1, "big"),  # RIFX
    ("WAV", "PCM_24", 8000, 2, "big"),
    ("WAVEX", "PCM_24", 96000, 4, "little"),
    ("WAVEX", "FLOAT", 44100, 2, "little"),
    ("RF64", "PCM_16", 8000, 2, "little"),
]


@pytest.mark.parametrize(("fmt", "subtype", "rate", "channels", "endian"), WAV_FORMS,
                         ids=[f"{f}-{s}-{c}ch-{e}" for f, s, _, c, e in WAV_FORMS])
@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_wav_forms_exact_from_the_header(http: FixtureHTTP, fmt: str, subtype: str, rate: int, channels: int,
                                         endian: str, ranges: bool) -> None:
    frames = rate * 3 + 7
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(frames, rate, channels), rate, format=fmt, subtype=subtype,
                    endian="BIG" if endian == "big" else "FILE")
    body = buffer.getvalue()
    if endian == "big":
        assert body[:4] == b"RIFX"
    result = worker().run({"url": serve(http, body, ranges)})
    assert (result["frames"], result["sample_rate"], result["channels"]) == (frames, rate, channels)
    assert result["duration"] == frames / rate
    assert (result["format"], result["method"]) == ("WAV", "header")
    assert result["bytes"] == (min(len(body), PREFIX_BYTES) if ranges else len(body))


def riff(fmt_body: bytes, data: bytes, before: bytes = b"", after: bytes = b"", data_size: int | None = None,
         magic: bytes = b"RIFF") -> bytes:
    size = len(data) if data_size is None else data_size
    chunks = before + b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    chunks += b"data" + struct.pack("<I", size) + data + (b"\x00" if len(data) & 1 else b"") + after
    return magic + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def pcm_fmt(channels: int, rate: int, bits: int, tag: int = 1) -> bytes:
    align = channels * ((bits + 7) // 8)
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


@pytest.mark.parametrize("bits", [12, 20, 36, 64])
def test_unusual_bit_depths_that_libsndfile_refuses(http: FixtureHTTP, bits: int) -> None:
    channels, rate, frames = 2, 11025, 12345
    align = channels * ((bits + 7) // 8)
    body = riff(pcm_fmt(channels, rate, bits), b"\x01" * (frames * align))
    result = worker().run({"url": serve(http, body)})
    assert (result["frames"], result["sample_rate"], result["channels"], result["method"]) == (
        frames, rate, channels, "header")


def test_extensible_header_written_by_hand(http: FixtureHTTP) -> None:
    channels, rate, frames = 3, 32000, 999
    pcm_guid = struct.pack("<IHH", 1, 0x0000, 0x0010) + bytes([0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71])
    fmt = pcm_fmt(channels, rate, 24, tag=0xFFFE) + struct.pack("<HHI", 22, 24, 0x7) + pcm_guid
    body = riff(fmt, b"\x00" * (frames * channels * 3))
    assert worker().run({"url": serve(http, body)})["frames"] == frames


def test_extra_chunks_before_and_after_data_and_an_odd_sized_chunk(http: FixtureHTTP) -> None:
    frames = 4001
    odd = b"junk" + struct.pack("<I", 3) + b"abc" + b"\x00"  # 3 bytes, padded to 4
    listing = b"LIST" + struct.pack("<I", 12) + b"INFOISFT" + struct.pack("<I", 0)
    after = b"id3 " + struct.pack("<I", 5) + b"ID3\x04\x00" + b"\x00"
    body = riff(pcm_fmt(1, 8000, 8), b"\x80" * frames, before=odd + listing, after=after)
    result = worker().run({"url": serve(http, body)})
    assert (result["frames"], result["method"]) == (frames, "header")
    assert soundfile.info(io.BytesIO(body)).frames == frames  # libsndfile agrees on this one


def test_streaming_wav_with_a_placeholder_size_runs_to_the_end_of_the_file(http: FixtureHTTP) -> None:
    frames = 3000
    body = riff(pcm_fmt(1, 8000, 16), b"\x00\x01" * frames, data_size=0xFFFFFFFF)
    body = body[:4] + struct.pack("<I", 0xFFFFFFFF) + body[8:]
    assert worker().run({"url": serve(http, body, ranges=False)})["frames"] == frames


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels", "expected_format"),
    [
        ("FLAC", "PCM_16", 44100, 2, "FLAC"),
        ("FLAC", "PCM_24", 96000, 1, "FLAC"),
        ("AIFF", "PCM_16", 44100, 2, "AIFF"),
        ("AIFF", "PCM_24", 22050, 1, "AIFF"),
        ("OGG", "VORBIS", 44100, 2, "OGG"),
        ("OGG", "OPUS", 48000, 1, "OGG"),
        ("MP3", "MPEG_LAYER_III", 44100, 1, "MP3"),
    ],
)
def test_other_formats_exact_from_the_header(http: FixtureHTTP, fmt: str, subtype: str, rate: int, channels: int,
                                             expected_format: str) -> None:
    frames = rate * 2 + 321
    body = encode(frames, rate, fmt, subtype, channels)
    result = worker().run({"url": serve(http, body)})
    assert (result["frames"], result["sample_rate"], result["channels"]) == (frames, rate, channels)
    assert (result["format"], result["method"]) == (expected_format, "header")


def strip_xing(body: bytes) -> tuple[bytes, int]:
    """An MP3 without its first (Xing) frame, and the audio frames the encoder counted in that frame."""
    from actors._headers import mpeg_frame

    at = body.find(b"Xing")
    assert body[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xe3") and 0 < at < 64, "the first frame is the Xing frame"
    (flags,) = struct.unpack(">I", body[at + 4:at + 8])
    assert flags & 1, "the Xing frame counts the frames"
    (counted,) = struct.unpack(">I", body[at + 8:at + 12])
    first = mpeg_frame(body[:4])
    assert first is not None
    stripped = body[first[0]:]
    assert b"Xing" not in stripped and b"Info" not in stripped and mpeg_frame(stripped[:4]) is not None
    return stripped, counted * first[1]


@pytest.mark.parametrize(("rate", "channels"), [(44100, 1), (48000, 2), (22050, 2), (8000, 1)],
                         ids=["mpeg1-mono", "mpeg1-stereo", "mpeg2", "mpeg2.5"])
def test_mp3_without_a_xing_frame_is_measured_by_its_frame_count(http: FixtureHTTP, rate: int, channels: int) -> None:
    stripped, samples = strip_xing(encode(rate * 2, rate, "MP3", "MPEG_LAYER_III", channels=channels))
    result = worker().run({"url": serve(http, stripped)})
    assert (result["method"], result["format"]) == ("scan", "MP3")
    assert (result["frames"], result["sample_rate"], result["channels"]) == (samples, rate, channels)
    id3v2 = b"ID3\x03\x00\x00\x00\x00\x01\x00" + b"\x00" * 128  # a tag before, an ID3v1 tag and junk after
    tagged = id3v2 + stripped + b"TAG" + b"\xff" * 125 + bytes(range(256)) * 4
    assert measure(tagged)["frames"] == samples


def test_a_range_request_of_the_header_is_enough_for_a_large_file(http: FixtureHTTP) -> None:
    rate, frames = 44100, 44100 * 60
    body = encode(frames, rate, "WAV", "PCM_16", channels=2)
    with_range = worker().run({"url": serve(http, body, ranges=True)})
    without = worker().run({"url": serve(http, body, ranges=False)})
    assert with_range["frames"] == without["frames"] == frames
    assert with_range["bytes"] == PREFIX_BYTES
    assert without["bytes"] == len(body) > 10 * MiB


def test_ogg_over_range_falls_back_to_the_whole_file(http: FixtureHTTP) -> None:
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, 44100 * 60).astype("float32")  # tones compress too well
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", 44100, 1, format="OGG", subtype="VORBIS") as out:
        for start in range(0, len(noise), 8192):  # libsndfile's Vorbis encoder crashes on one large write
            out.write(noise[start:start + 8192])
    body = buffer.getvalue()
    assert len(body) > PREFIX_BYTES
    result = worker().run({"url": serve(http, body)})
    assert result["frames"] == 44100 * 60
    assert result["bytes"] == PREFIX_BYTES + len(body)


# --- failures ---------------------------------------------------------------------------------------

def run_failing(url: str, **config: object) -> JobFailed:
    with pytest.raises(JobFailed) as caught:
        worker(**config).run({"url": url})
    assert "Traceback" not in caught.value.message
    return caught.value


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_files_cut_before_their_audio_are_not_audio(http: FixtureHTTP, ranges: bool) -> None:
    wav = encode(44100 * 10, 44100, "WAV", "PCM_16")
    for body in (wav[:30], wav[:44]):
        failure = run_failing(serve(http, body, ranges))
        assert failure.code == "not_audio", failure.message


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"", "not_audio", "empty"),
        (b"<!DOCTYPE html><html><head><title>404</title></head><body>gone</body></html>", "not_audio", "HTML"),
        (b'{"error": "expired"}', "not_audio", "text"),
        (bytes(range(256)) * 40, "unsupported_format", "not an audio format"),
        (riff(pcm_fmt(1, 8000, 16), b""), "not_audio", "no audio frames"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt \x02\x00\x00\x00ab", "not_audio", "fmt chunk"),
        (b"fLaC\x00\x00\x00\x22" + b"\x00" * 34 + b"\x00" * 200, "not_audio", "sample rate"),
        (b"OggS" + b"\x00" * 5000, "not_audio", "OGG"),
    ],
    ids=["empty", "html", "json", "noise", "wav-without-frames", "short-fmt", "flac-without-rate", "broken-ogg"],
)
def test_bodies_that_are_not_audio(http: FixtureHTTP, body: bytes, code: str, words: str) -> None:
    failure = run_failing(serve(http, body))
    assert (failure.code, words in failure.message) == (code, True), failure.message


def test_measure_refuses_what_it_cannot_read_and_the_worker_keeps_serving(http: FixtureHTTP) -> None:
    audio = worker()
    for junk in (b"\xff\xfb" + bytes(range(256)) * 8, b"FORM\x00\x00\x00\x04AIFF", b"ID3\x03\x00\x00\x00\x00\x00\x00"):
        with pytest.raises(JobFailed):
            audio.run({"url": serve(http, junk)})
    assert audio.run({"url": serve(http, encode(800, 8000, "WAV", "PCM_16"))})["frames"] == 800


@pytest.mark.parametrize("status", [403, 404, 410, 500, 503])
def test_http_errors_are_fetch_failed_with_the_status(http: FixtureHTTP, status: int) -> None:
    failure = run_failing(http.add(f"/status/{status}", Fixture(status=status, body=b"no")))
    assert failure.code == "fetch_failed" and f"HTTP {status}" in failure.message


def test_refused_connection_and_unknown_host_are_fetch_failed() -> None:
    closed = FixtureHTTP()
    closed.httpd.server_close()
    assert run_failing(f"http://127.0.0.1:{closed.port}/a.wav").code == "fetch_failed"
    resolver = UrlGuard(allow_private=True, resolver=lambda host, port: (_ for _ in ()).throw(
        socket.gaierror(socket.EAI_NONAME, "Name or service not known")))
    with pytest.raises(JobFailed) as caught:
        AudioLength(WorkerConfig(fetch_timeout=5), guard=resolver).run({"url": "http://no-such-host.test/a.wav"})
    assert caught.value.code == "fetch_failed" and "no-such-host.test" in caught.value.message


@pytest.fixture
def stall() -> Iterator[threading.Event]:
    release = threading.Event()
    yield release
    release.set()


def test_a_server_that_stops_sending_times_out(http: FixtureHTTP, stall: threading.Event) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(b"RIFF")
        handler.wfile.flush()
        stall.wait(60)

    failure = run_failing(http.add("/slow", slow), fetch_timeout=0.5)
    assert failure.code == "timeout"


def test_a_server_that_never_answers_times_out(http: FixtureHTTP, stall: threading.Event) -> None:
    def silent(handler: BaseHTTPRequestHandler) -> None:
        stall.wait(60)

    failure = run_failing(http.add("/silent", silent), fetch_timeout=0.5)
    assert failure.code == "timeout"


def test_an_endless_body_stops_at_the_size_cap(http: FixtureHTTP) -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        chunk = b"\x00" * 65536
        try:
            for _ in range(2000):  # bounded: 128 MiB at most
                handler.wfile.write(chunk)
        except OSError:
            pass

    failure = run_failing(http.add("/endless", endless), max_audio_bytes=MiB)
    assert failure.code == "too_large"


def test_content_length_over_the_cap_is_refused_before_reading(http: FixtureHTTP) -> None:
    body = encode(8000 * 20, 8000, "WAV", "PCM_16")
    assert run_failing(serve(http, body, ranges=False), max_audio_bytes=64 * 1024).code == "too_large"
    assert run_failing(serve(http, body, ranges=True), max_audio_bytes=64 * 1024).code == "too_large"


def test_a_lying_content_length_is_fetch_failed(http: FixtureHTTP) -> None:
    def liar(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000000")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(encode(800, 8000, "WAV", "PCM_16"))
        handler.close_connection = True

    assert run_failing(http.add("/liar", liar)).code == "fetch_failed"


def redirect_chain(http: FixtureHTTP, name: str, hops: int, final: str) -> str:
    def hop(index: int) -> object:
        def handler(request: BaseHTTPRequestHandler) -> None:
            request.send_response(302)
            target = final if index == hops - 1 else http.url(f"/{name}/{index + 1}")
            request.send_header("Location", target)
            request.send_header("Content-Length", "0")
            request.end_headers()

        return handler

    for index in range(hops):
        http.add(f"/{name}/{index}", hop(index))  # type: ignore[arg-type]
    return http.url(f"/{name}/0")


def test_at_most_five_redirects(http: FixtureHTTP) -> None:
    target = serve(http, encode(800, 8000, "WAV", "PCM_16"))
    assert worker().run({"url": redirect_chain(http, "five", 5, target)})["frames"] == 800
    failure = run_failing(redirect_chain(http, "six", 6, target))
    assert failure.code == "fetch_failed" and "redirects more than 5" in failure.message


# --- the URL guard --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("240.0.0.1", "reserved"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
        ("100.64.0.1", "non-public"), ("198.18.0.1", "private"),
        ("8.8.8.8", None), ("93.184.216.34", None), ("2001:4860:4860::8888", None),
    ],
)
def test_address_check(address: str, reason: str | None) -> None:
    assert forbidden_reason(address) == reason


def guarded(table: dict[str, list[str]], public: set[str]) -> AudioLength:
    """The guard switched on, with a stub resolver and only the addresses in `public` counted as public.

    127.0.0.1 plays the public internet, so that redirects from it can be followed; everything else
    goes through the real address check."""
    guard = UrlGuard(
        allow_private=False,
        resolver=lambda host, port: table.get(host, [host]),
        reason=lambda address: None if address in public else forbidden_reason(address),
    )
    return AudioLength(WorkerConfig(fetch_timeout=5), guard=guard)


def test_guard_refuses_hosts_resolving_to_internal_addresses_without_connecting(http: FixtureHTTP) -> None:
    audio = guarded({"intranet.example": ["10.1.2.3"], "mixed.example": ["127.0.0.1", "192.168.0.7"],
                     "metadata.example": ["169.254.169.254"], "v6.example": ["fd00::5"]}, public={"127.0.0.1"})
    for host in ("intranet.example", "mixed.example", "metadata.example", "v6.example"):
        with pytest.raises(JobFailed) as caught:
            audio.run({"url": f"http://{host}:{http.port}/a.wav"})
        assert caught.value.code == "forbidden_url", caught.value.message
    served = serve(http, encode(800, 8000, "WAV", "PCM_16"))
    assert audio.run({"url": served})["frames"] == 800


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:{port}/a.wav", "http://[::1]:{port}/a.wav",
     "http://intranet.example/a.wav", "http://10.0.0.8/a.wav"],
)
def test_guard_checks_every_redirect_hop(http: FixtureHTTP, target: str) -> None:
    audio = guarded({"intranet.example": ["192.168.10.10"]}, public={"127.0.0.1"})
    url = redirect_chain(http, f"hop{abs(hash(target))}", 2, target.format(port=http.port))
    with pytest.raises(JobFailed) as caught:
        audio.run({"url": url})
    assert caught.value.code == "forbidden_url", caught.value.message


def test_guard_on_by_default_refuses_loopback(http: FixtureHTTP) -> None:
    url = serve(http, encode(800, 8000, "WAV", "PCM_16"))
    with pytest.raises(JobFailed) as caught:
        AudioLength(WorkerConfig(fetch_timeout=5)).run({"url": url})
    assert caught.value.code == "forbidden_url"
    assert "loopback" in caught.value.message
    assert worker(allow_private_urls=True).run({"url": url})["frames"] == 800


def test_redirect_out_of_http_is_refused(http: FixtureHTTP) -> None:
    url = redirect_chain(http, "ftp", 1, "ftp://127.0.0.1/a.wav")
    assert run_failing(url).code == "forbidden_url"


def test_measure_works_on_bytes_without_a_network() -> None:
    assert measure(encode(1234, 8000, "FLAC", "PCM_16"))["frames"] == 1234
    assert np.isclose(measure(encode(8000, 8000, "WAV", "PCM_16"))["duration"], 1.0)
