"""audio.length against hostile and broken servers and files: deadlines, stuck downloads, bombs, bad headers."""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import soundfile

from actors import JobFailed
from actors._fetch import UrlGuard, forbidden_reason
from actors.audio import measure
from bench.hostile import measure_in_child, silent_mp3
from tests.audio_files import encode
from tests.helpers import FixtureHTTP
from tests.unit.test_audio import loopback_only, serve, worker

__all__ = ["loopback_only"]  # the loopback safety net applies here too (autouse)


# --- headers that contradict themselves or the file --------------------------------------------------

def riff(fmt_body: bytes, data: bytes, data_size: int | None = None) -> bytes:
    size = len(data) if data_size is None else data_size
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, align: int, sub_tag: int = 1) -> bytes:
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        body += struct.pack("<HHIH", 22, bits, 3, sub_tag) + guid_tail
    return body


FORMS = {  # name: (tag, bits, sub-format tag); two channels, so a frame is 2 x bytes per sample
    "pcm16": (1, 16, 1),
    "pcm24": (1, 24, 1),
    "float32": (3, 32, 3),
    "extensible-pcm24": (0xFFFE, 24, 1),
    "extensible-float": (0xFFFE, 32, 3),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("align_factor", [0.5, 2.0], ids=["half-align", "double-align"])
def test_a_block_align_that_disagrees_is_answered_as_libsndfile_does(form: str, align_factor: float) -> None:
    tag, bits, sub = FORMS[form]
    width, frames = 2 * bits // 8, 1000
    body = riff(fmt_chunk(tag, 2, 8000, bits, int(width * align_factor), sub), bytes(frames * width))
    assert soundfile.info(io.BytesIO(body)).frames == frames
    result = measure(body)
    assert (result["frames"], result["method"]) == (frames, "header") and "truncated" not in result


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_data_chunk_longer_than_the_file_counts_the_audio_there(http: FixtureHTTP, form: str, ranges: bool) -> None:
    tag, bits, sub = FORMS[form]
    width = 2 * bits // 8
    body = riff(fmt_chunk(tag, 2, 8000, bits, width, sub), bytes(600 * width + 1), data_size=1000 * width)
    assert soundfile.info(io.BytesIO(body)).frames == 600
    result = worker().run({"url": serve(http, body, ranges)})
    assert (result["frames"], result["truncated"], result["duration"]) == (600, True, 600 / 8000)


@pytest.mark.parametrize(("fmt", "subtype", "width"), [("RF64", "PCM_16", 4), ("RF64", "FLOAT", 8),
                                                       ("AIFF", "PCM_16", 4), ("AIFF", "FLOAT", 8)])
def test_cut_rf64_and_aiff_files_count_the_audio_there(http: FixtureHTTP, fmt: str, subtype: str,
                                                        width: int) -> None:
    whole = encode(1000, 8000, fmt, subtype, channels=2)
    cut = whole[:len(whole) - 400 * width]
    assert soundfile.info(io.BytesIO(cut)).frames == 600
    result = worker().run({"url": serve(http, cut)})
    assert (result["frames"], result["truncated"]) == (600, True)
    assert "truncated" not in worker().run({"url": serve(http, whole)})


def test_a_flac_of_unknown_length_is_counted_not_reported_as_huge(http: FixtureHTTP) -> None:
    body = bytearray(encode(12345, 16000, "FLAC", "PCM_16", channels=2))
    assert body[:4] == b"fLaC" and body[4] & 0x7F == 0
    (packed,) = struct.unpack(">Q", body[18:26])
    body[18:26] = struct.pack(">Q", packed & ~0xFFFFFFFFF)  # total samples = 0: "unknown", which is legal
    assert soundfile.info(io.BytesIO(bytes(body))).frames > 1 << 62, "libsndfile's 'unknown' is a huge number"
    result = worker().run({"url": serve(http, bytes(body))})
    assert (result["frames"], result["sample_rate"], result["channels"], result["method"]) == (
        12345, 16000, 2, "decode")


def test_a_length_the_files_size_cannot_hold_is_never_reported(http: FixtureHTTP) -> None:
    # A 144-byte FLAC whose STREAMINFO claims 2^36-1 samples at 1 Hz: 68,719,476,735 s if believed.
    head = bytearray(b"fLaC" + bytes([0x80, 0, 0, 34]) + bytes(34))
    packed = (1 << 44) | (0 << 41) | (15 << 36) | (2**36 - 1)  # 1 Hz, mono, 16 bits, 2^36-1 samples
    head[18:26] = struct.pack(">Q", packed)
    liar = bytes(head) + bytes(144 - len(head))
    try:
        result = worker().run({"url": serve(http, liar)})
    except JobFailed as failed:  # nothing decodable there: refused, never the claimed length
        assert failed.code in ("not_audio", "unsupported_format")
    else:
        assert result["frames"] < 2**36 - 1 and result["truncated"] and result["method"] == "decode", result
    # A real FLAC whose count was inflated past what its bytes can hold: the audio that is there, truncated.
    body = bytearray(encode(12345, 16000, "FLAC", "PCM_16", channels=2))
    (packed,) = struct.unpack(">Q", body[18:26])
    body[18:26] = struct.pack(">Q", (packed & ~0xFFFFFFFFF) | (2**36 - 1))
    result = worker().run({"url": serve(http, bytes(body))})
    assert (result["frames"], result["truncated"], result["method"]) == (12345, True, "decode")
    # A WAV whose data chunk claims 2^32-1 bytes in a 100-byte file: the frames that are there.
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    wav = b"RIFF" + struct.pack("<I", 92) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    wav += b"data" + struct.pack("<I", 0xFFFFFFFE) + bytes(100 - len(wav) - 8)
    result = worker().run({"url": serve(http, wav)})
    assert result["frames"] == (100 - 44) // 2 and result["frames"] < 2**31, result


# --- a decompression bomb ------------------------------------------------------------------------------

def test_a_long_silent_mp3_is_measured_in_small_memory(tmp_path: Path) -> None:
    body, samples = silent_mp3(20)
    path = tmp_path / "silence.mp3"
    path.write_bytes(body)
    measured = measure_in_child(path)
    assert (measured["frames"], measured["method"]) == (samples, "scan")
    assert samples == 20 * 60 * 48000 // 1152 * 1152
    assert measured["grew_kib"] < 16 * 1024, measured  # decoding it whole took ~700 MB


# --- servers that trickle, stall, or never finish -----------------------------------------------------

class Trickle:
    """A handler that announces 10 MB and sends a byte now and then; it notes when the client hangs up."""

    def __init__(self) -> None:
        self.hung_up = threading.Event()
        self.stop = threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "10000000")
        handler.end_headers()
        try:
            while not self.stop.wait(0.05):
                handler.wfile.write(b"\x00")
                handler.wfile.flush()
        except OSError:
            self.hung_up.set()


@pytest.fixture
def trickle(http: FixtureHTTP) -> Iterator[tuple[str, Trickle]]:
    handler = Trickle()
    url = http.add(f"/trickle/{len(http.routes)}", handler)
    yield url, handler
    handler.stop.set()


def test_a_trickling_server_cannot_outlast_the_download_deadline(trickle: tuple[str, Trickle]) -> None:
    url, handler = trickle
    with pytest.raises(JobFailed) as caught:
        worker(fetch_timeout=1.0).run({"url": url})
    assert caught.value.code == "timeout" and "longer than 1 s" in caught.value.message
    assert handler.hung_up.wait(30), "the connection was let go"


# --- the address check: wrapped IPv4 forms, and messages that do not leak -----------------------------

@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("2002:7f00:1::", "loopback"), ("2002:a00:1::1", "private"), ("2002:a9fe:a9fe::", "link-local"),
        ("64:ff9b::10.0.0.1", "private"), ("64:ff9b::127.0.0.1", "loopback"), ("64:ff9b::169.254.169.254",
                                                                                "link-local"),
        ("::10.0.0.1", "private"), ("::127.0.0.1", "loopback"), ("::ffff:192.168.0.1", "private"),
        ("fec0::1", "site-local"), ("fec0:1:2::3", "site-local"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo, to 10.0.0.1
        ("2002:808:808::", None), ("64:ff9b::8.8.8.8", None),
    ],
)
def test_wrapped_ipv4_and_site_local_addresses(address: str, reason: str | None) -> None:
    assert forbidden_reason(address) == reason


def test_a_refusal_names_the_reason_but_not_the_address() -> None:
    table = {"intranet.example": ["10.1.2.3"], "nat64.example": ["64:ff9b::a01:203"], "old.example": ["fec0::7"]}
    guard = UrlGuard(allow_private=False, resolver=lambda host, port: table[host])
    for host, why in (("intranet.example", "private"), ("nat64.example", "private"), ("old.example", "site-local")):
        with pytest.raises(JobFailed) as caught:
            guard.addresses(host, 80)  # the check alone: nothing is connected to
        message = caught.value.message
        assert caught.value.code == "forbidden_url" and why in message and host in message
        assert "10.1.2.3" not in message and "a01" not in message and "fec0" not in message


@pytest.mark.parametrize("fmt", ["RF64", "WAVEX"])
def test_a_bad_block_align_in_rf64_and_extensible_files_from_libsndfile(fmt: str) -> None:
    body = bytearray(encode(1000, 8000, fmt, "PCM_16", channels=2))
    at = body.index(b"fmt ") + 8 + 12  # the block align field of the fmt chunk
    assert struct.unpack("<H", body[at:at + 2]) == (4,)
    body[at:at + 2] = struct.pack("<H", 2)
    assert soundfile.info(io.BytesIO(bytes(body))).frames == 1000
    assert measure(bytes(body))["frames"] == 1000
