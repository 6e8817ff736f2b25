"""The benchmark report from synthetic results: every section written, targets judged, the real p99 used."""

from __future__ import annotations

from pathlib import Path

from bench.loadgen import percentile
from bench.measure import Figure, Held
from bench.report import write_report
from bench.results import Results
from bench.targets import targets

SHAPES = ["1 x 1", "1 x 64", "32 x 64"]


def results(push: list[float]) -> Results:
    def figures(rate: float) -> dict[str, Figure]:
        return {shape: Figure(rate, 1.0, 2.0) for shape in SHAPES}

    audio = {"1 s WAV": {"header": 0.1, "decode": 2.0, "range": 1.0, "whole": 1.5}, "jobs": Figure(100, 5, 9),
             "memory": {"20 min": {"frames": 57_600_000, "grew_kib": 1800}}}
    return Results(quick=True, runs=1, seconds=60, shapes=SHAPES,
                   stores={"memory": figures(1000), "sqlite": figures(900), "redis": figures(850)},
                   raw=figures(1000), served=figures(300), polls={"push (WebSocket)": push, "polling 1 s": [500.0]},
                   conns={"10,000 idle": Held(10_000, 10_000, 19_000, 10_000, 0),
                          "18,000 idle (file limit 20,000)": Held(18_000, 18_000, 19_000, 18_000, 0),
                          "10,000 opened at once": Held(10_000, 10_000, 19_000, 10_000, 0),
                          "10,000 idle, a minimal Starlette app (uvicorn --ws websockets-sansio)":
                              Held(10_000, 10_000, 19_500, 10_000, 0),
                          "10,000 idle, a minimal Starlette app (uvicorn --ws websockets)":
                              Held(10_000, 10_000, 33_000, 10_000, 0)},
                   slow={"close code": 4008, "rss growth MiB": 0.5, "limit MiB": 1.0, "ping p50 ms": 0.4,
                         "ping p99 ms": 2.0},
                   audio=audio, cold=[4.0],
                   flood={"alone": latencies(0.5, 4.0), "flood": latencies(2.0, 30.0),
                          "flooder": {"frames": 250_000, "rate_limited": 9000, "accepted": 1800, "reconnects": 1,
                                      "close codes": [4029]}},
                   slowloris={"from 4 addresses": {"sockets": 2000.0, "refused (429)": 0.0, "timed out (408)": 2000.0,
                                                   "left": 0.0, "seconds": 15.0, "connect p50": 3.5,
                                                   "connect max": 30.0}},
                   fairness={"alone wait p50": 0.5, "alone wait p95": 1.0, "flood wait p50": 0.6, "flood wait p95": 1.1,
                             "alone total p50": 8.0, "alone total p95": 10.0, "flood total p50": 12.0,
                             "flood total p95": 30.0, "A sent": 9600, "jobs": 60},
                   speech={"ten": speech(593, 1.8), "hour": speech(3546, 9.7), "product": {
                       "accepted ms": 1.5, "first progress ms": 38.0, "result ms": 1700.0, "segments": 159}})


def speech(duration: float, seconds: float) -> dict[str, float]:
    return {"duration": duration, "seconds": seconds, "rtf": duration / seconds, "segments": 159,
            "progress frames": 7, "first progress s": 0.03, "rss growth MiB": 0.9, "bytes": 26e6}


def latencies(ping: float, echo: float) -> dict[str, float]:
    return {"ping p50": ping, "ping p99": 2 * ping, "echo p50": echo, "echo p99": 2 * echo, "samples": 300.0}


def test_percentile_is_the_nearest_rank_not_the_maximum() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.99), percentile(values, 0.5), percentile([7.0], 0.99)) == (99.0, 50.0, 7.0)


def test_the_report_has_every_section_and_judges_the_targets(tmp_path: Path) -> None:
    push = [1.0] * 199 + [50.0]  # one outlier in 200: the p99 is 1 ms, the maximum 50
    out = tmp_path / "BENCHMARKS.md"
    write_report(results(push), out)
    text = out.read_text()
    for heading in ("## Echo jobs", "## Push against polling", "## Idle connections", "## A client that never reads",
                    "## A client that floods", "## Audio", "## Speech (audio.speech)", "## Cold start", "## Targets"):
        assert heading in text, heading
    assert "| push (WebSocket) | 1.0 | 1.0 |" in text
    judged = {name.split(":")[0]: ok for name, ok in targets(results(push))}
    assert judged["push delay p99 <= 5 ms"] and judged["ahead of Ray Serve, every load"]
    assert judged["as many idle sockets as the file limit allows, all answering"]
    assert judged["while one socket floods, another's ping p99 <= 50 ms and echo round trip p99 <= 100 ms"]
    assert judged["no slowloris socket left 15 s later"]
    assert judged["a light tenant's p95 wait to start beside a flooding one <= 1.2x its wait alone"]
    assert judged["an idle socket costs <= 1.0x a minimal Starlette app's under uvicorn's best WebSocket "
                  "implementation (same run)"]
    assert "| 2,000 from 4 addresses | 0 | 2,000 | 0 | 3.50 | 30.00 |" in text
    assert judged["audio.speech real-time factor on one core, 10 minutes of speech and silence >= 100x"]
    assert judged["a speech actor's peak RSS grows <= 50 MiB measuring a 60-minute file"]
    assert "| 10 min, 22.05 kHz WAV (24.8 MiB) | 593 s | 1.80 s | 329x | 159 | 7 | 30 ms | 0.9 MiB |" in text
    assert not {name.split(":")[0]: ok for name, ok in targets(results([50.0] * 200))}["push delay p99 <= 5 ms"]
