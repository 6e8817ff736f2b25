"""euro.results: dates, every markup era of euro-millions.com, checks on what was parsed, one fetch per draw."""

from __future__ import annotations

import csv
import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import pytest

from actors import InvalidArgs, JobFailed, WorkerConfig
from actors.euro import EuroResults, draw_day_problem, parse_page, validate
from bench.servers import ROOT
from tests.euro_pages import balls_drawn_2020, current_page, history_rows_2023, order_cell_2018, tables_2013
from tests.helpers import Fixture, FixtureHTTP

DATA = ROOT.parent / "shared" / "data"  # beside the project, when it is there
TODAY = dt.date(2026, 11, 25)

# Real draws, typed in as facts (each agrees with shared/data/euromillions-draws.csv).
FIRST = (dt.date(2004, 2, 13), [16, 29, 32, 36, 41], [7, 9])
JULY_2013 = (dt.date(2013, 7, 2), [11, 13, 14, 28, 30], [4, 5])
AUG_2020 = (dt.date(2020, 8, 21), [10, 15, 35, 44, 50], [3, 5])
AUG_2020_DRAWN = ([10, 35, 50, 15, 44], [5, 3])
MARCH_2024 = (dt.date(2024, 3, 26), [2, 13, 14, 26, 29], [5, 6])
JANUARY_2026 = (dt.date(2026, 1, 2), [8, 27, 42, 44, 46], [1, 10])


# --- dates ------------------------------------------------------------------------------------

def expected_draw_day(day: dt.date) -> bool:
    if day < dt.date(2004, 2, 13):
        return False
    if day <= dt.date(2011, 5, 6):
        return day.weekday() == 4
    return day.weekday() in (1, 4)


def test_every_day_from_2003_to_today_against_the_schedule() -> None:
    day, draws = dt.date(2003, 12, 1), 0
    while day <= TODAY + dt.timedelta(days=30):
        problem = draw_day_problem(day, TODAY)
        if day > TODAY:
            assert problem == f"{day.isoformat()} is in the future"
        else:
            assert (problem is None) == expected_draw_day(day), day
            draws += problem is None
        day += dt.timedelta(days=1)
    # 378 Friday-only draws (13 Feb 2004 .. 6 May 2011), then two a week.
    assert draws == 378 + sum(1 for n in range((TODAY - dt.date(2011, 5, 10)).days + 1)
                              if (dt.date(2011, 5, 10) + dt.timedelta(days=n)).weekday() in (1, 4))


@pytest.mark.skipif(not (DATA / "euromillions-draws.csv").exists(), reason="shared/data is absent")
def test_the_schedule_matches_every_real_draw() -> None:
    with (DATA / "euromillions-draws.csv").open() as handle:
        real = {dt.date.fromisoformat(row["date"]) for row in csv.DictReader(handle)}
    last = max(real)
    day, scheduled = dt.date(2004, 2, 13), set()
    while day <= last:
        if draw_day_problem(day, last) is None:
            scheduled.add(day)
        day += dt.timedelta(days=1)
    assert scheduled == real


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-01-03", "2024-01-03 is a Wednesday; draws are on Tuesdays and Fridays"),
        ("03-01-2024", "2024-01-03 is a Wednesday; draws are on Tuesdays and Fridays"),
        ("2005-03-08", "2005-03-08 is a Tuesday; draws were on Fridays only until 6 May 2011"),
        ("2004-02-06", "2004-02-06 is before the first draw (Friday 13 February 2004)"),
        ("2026-11-27", "2026-11-27 is in the future"),
        ("2024-02-30", "'2024-02-30' is not a date; use YYYY-MM-DD or DD-MM-YYYY"),
        ("yesterday", "'yesterday' is not a date; use YYYY-MM-DD or DD-MM-YYYY"),
        ("2024/03/26", "'2024/03/26' is not a date; use YYYY-MM-DD or DD-MM-YYYY"),
    ],
)
def test_invalid_dates_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidArgs) as caught:
        validate({"date": text}, today=TODAY)
    assert caught.value.message == message


def test_valid_dates_in_both_forms_become_iso() -> None:
    assert validate({"date": "26-03-2024"}, today=TODAY) == {"date": "2024-03-26"}
    assert validate({"date": " 2004-02-13 "}, today=TODAY) == {"date": "2004-02-13"}
    assert validate({"date": "2011-05-10"}, today=TODAY) == {"date": "2011-05-10"}
    for bad in ({}, {"date": 20240326}, {"date": "2024-03-26", "extra": 1}):
        with pytest.raises(InvalidArgs):
            validate(bad, today=TODAY)


# --- every markup era ----------------------------------------------------------------------------

def test_current_per_date_page() -> None:
    day, numbers, stars = JANUARY_2026
    page = current_page("Friday 2<sup>nd</sup> January 2026", [44, 8, 46, 27, 42], [10, 1],
                        canonical="https://www.euro-millions.com/results/02-01-2026")
    assert parse_page(page, day) == {"date": "2026-01-02", "numbers": numbers, "stars": stars}


def test_current_page_with_drawn_order() -> None:
    day, numbers, stars = AUG_2020
    page = current_page("Friday 21st August 2020", numbers, stars, drawn=AUG_2020_DRAWN)
    assert parse_page(page, day)["drawn_order"] == {"numbers": [10, 35, 50, 15, 44], "stars": [5, 3]}


def test_2020_divs_balls_ascending_and_balls_drawn() -> None:
    day, numbers, stars = AUG_2020
    result = parse_page(balls_drawn_2020(numbers, stars, AUG_2020_DRAWN), day)
    assert result == {"date": "2020-08-21", "numbers": numbers, "stars": stars,
                      "drawn_order": {"numbers": [10, 35, 50, 15, 44], "stars": [5, 3]}}


def test_2020_balls_drawn_alone_is_sorted_and_kept_as_drawn_order() -> None:
    day, numbers, stars = AUG_2020
    page = b'<div id="ballsDrawn"><ul>' + b"".join(
        f'<li class="new ball">{n}</li>'.encode() for n in AUG_2020_DRAWN[0]) + b"".join(
        f'<li class="new lucky-star">{s}</li>'.encode() for s in AUG_2020_DRAWN[1]) + b"</ul></div>"
    result = parse_page(page, day)
    assert (result["numbers"], result["stars"]) == (numbers, stars)
    assert result["drawn_order"]["numbers"] == [10, 35, 50, 15, 44]


@pytest.mark.parametrize("inline", [False, True], ids=["markup", "inline-script"])
def test_2018_js_ball_order_cell(inline: bool) -> None:
    day, numbers, stars = MARCH_2024
    assert parse_page(order_cell_2018(numbers, stars, inline), day)["numbers"] == numbers


def test_2013_per_date_table() -> None:
    day, numbers, stars = JULY_2013
    page = tables_2013([("Tuesday 2nd July 2013", "02-07-2013", numbers, stars)])
    assert parse_page(page, day) == {"date": "2013-07-02", "numbers": numbers, "stars": stars}


def test_2013_listing_of_several_draws_picks_the_date_asked() -> None:
    day, numbers, stars = JULY_2013
    page = tables_2013([
        ("Tuesday 2nd July 2013", "02-07-2013", numbers, stars),
        ("Friday 28th June 2013", "28-06-2013", [1, 2, 3, 4, 5], [6, 7]),
    ])
    assert parse_page(page, day)["numbers"] == numbers
    assert parse_page(page, dt.date(2013, 6, 28))["numbers"] == [1, 2, 3, 4, 5]
    with pytest.raises(JobFailed) as caught:
        parse_page(page, dt.date(2013, 6, 25))
    assert caught.value.code == "parse_failed" and "2013-07-02" in caught.value.message


def test_2023_history_rows() -> None:
    day, numbers, stars = MARCH_2024
    page = history_rows_2023([("29-03-2024", [1, 2, 3, 4, 5], [1, 2]), ("26-03-2024", numbers, stars)])
    assert parse_page(page, day)["numbers"] == numbers


def test_single_class_zero_padded_spaced_and_extra_attributes() -> None:
    day = FIRST[0]
    page = ('<html><body><ul id="ballsAscending" data-x="1">'
            + "".join(f'<li class="ball" title="n">\n  {n:02d} \n</li>' for n in FIRST[1])
            + "".join(f'<li  class="lucky-star small extra">0{s}</li>' for s in FIRST[2])
            + "</ul></body></html>")
    assert parse_page(page, day) == {"date": "2004-02-13", "numbers": FIRST[1], "stars": FIRST[2]}


# --- never a wrong answer ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("page", "day", "code", "words"),
    [
        (b"<html><body><p>Results coming soon</p></body></html>", MARCH_2024[0], "parse_failed", "no results block"),
        (current_page("Tuesday 26th March 2024", [1, 2, 3, 4, 5, 6], [1, 2]), MARCH_2024[0], "parse_failed",
         "5 distinct"),
        (current_page("Friday 21st August 2020", [1, 2, 3, 4, 5], [1, 13]), AUG_2020[0], "parse_failed",
         "1 to 12"),
        (current_page("Friday 4th March 2016", [1, 2, 3, 4, 5], [1, 12]), dt.date(2016, 3, 4), "parse_failed",
         "1 to 11"),
        (current_page("Friday 6th May 2011", [1, 2, 3, 4, 5], [1, 10]), dt.date(2011, 5, 6), "parse_failed",
         "1 to 9"),
        (current_page("Tuesday 26th March 2024", [7, 7, 3, 4, 5], [1, 2]), MARCH_2024[0], "parse_failed",
         "5 distinct"),
        (current_page("Tuesday 26th March 2024", [7, 8, 3, 4, 51], [1, 2]), MARCH_2024[0], "parse_failed",
         "1 to 50"),
        (current_page("Tuesday 26th March 2024", [1, 2, 3, 4, 5], [3, 3]), MARCH_2024[0], "parse_failed",
         "2 distinct"),
        (current_page("Friday 29th March 2024", [1, 2, 3, 4, 5], [3, 4]), MARCH_2024[0], "parse_failed",
         "2024-03-29"),
        (current_page("Tuesday 26th March 2024", [1, 2, 3, 4, 5], [3, 4],
                      canonical="https://www.euro-millions.com/results/29-03-2024"), MARCH_2024[0], "parse_failed",
         "2024-03-29"),
        (current_page("Tuesday 26th March 2024", [], []).replace(b'</ul>', b''.join(
            b'<li class="resultBall ball">-</li>' for _ in range(5)) + b'</ul>'), MARCH_2024[0], "not_found",
         "not published yet"),
    ],
    ids=["no-block", "six-numbers", "star-13-in-2020", "star-12-in-2016", "star-10-in-2011", "duplicates",
         "number-51", "duplicate-stars", "heading-for-another-date", "canonical-for-another-date", "in-progress"],
)
def test_pages_that_cannot_be_trusted_fail_with_what_was_seen(page: bytes, day: dt.date, code: str,
                                                               words: str) -> None:
    with pytest.raises(JobFailed) as caught:
        parse_page(page, day)
    assert caught.value.code == code
    assert words in caught.value.message


# --- the worker against a real HTTP server ----------------------------------------------------

@pytest.fixture
def worker(http: FixtureHTTP) -> EuroResults:
    return EuroResults(WorkerConfig(euro_url=http.url(f"/{uuid.uuid4().hex}/"), fetch_timeout=5))


def test_fetches_date_page_with_a_user_agent_naming_the_product(worker: EuroResults, http: FixtureHTTP) -> None:
    _day, numbers, stars = MARCH_2024
    path = worker.base_url.split(str(http.port))[1] + "26-03-2024"
    http.add(path, Fixture(body=current_page("Tuesday 26th March 2024", numbers, stars)))
    assert worker.run({"date": "2024-03-26"}) == {"date": "2024-03-26", "numbers": numbers, "stars": stars}
    agent = next(headers for seen, headers in http.requests if seen == path)["User-Agent"]
    assert agent.startswith("async-ml-inference/")


@pytest.mark.parametrize(
    ("fixture", "code", "words"),
    [
        (Fixture(status=404, body=b"missing"), "not_found", "HTTP 404"),
        (Fixture(status=500, body=b"oops"), "fetch_failed", "HTTP 500"),
        (Fixture(status=200, body=b""), "parse_failed", "empty page"),
        (Fixture(status=200, body=b"   \n"), "parse_failed", "empty page"),
    ],
)
def test_http_failures(worker: EuroResults, http: FixtureHTTP, fixture: Fixture, code: str, words: str) -> None:
    http.add(worker.base_url.split(str(http.port))[1] + "26-03-2024", fixture)
    with pytest.raises(JobFailed) as caught:
        worker.run({"date": "2024-03-26"})
    assert caught.value.code == code and words in caught.value.message


def test_network_failure_is_fetch_failed() -> None:
    closed = FixtureHTTP()
    closed.httpd.server_close()  # the port is now refused
    worker = EuroResults(WorkerConfig(euro_url=f"http://127.0.0.1:{closed.port}/", fetch_timeout=5))
    with pytest.raises(JobFailed) as caught:
        worker.run({"date": "2024-03-26"})
    assert caught.value.code == "fetch_failed"


def test_concurrent_requests_share_one_fetch_and_results_are_cached(worker: EuroResults, http: FixtureHTTP) -> None:
    _day, numbers, stars = MARCH_2024
    release, hits = threading.Event(), []

    def slow(handler: BaseHTTPRequestHandler) -> None:
        hits.append(handler.path)
        release.wait(30)
        body = current_page("Tuesday 26th March 2024", numbers, stars)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    http.add(worker.base_url.split(str(http.port))[1] + "26-03-2024", slow)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(worker.run, {"date": "2024-03-26"}) for _ in range(6)]
        while not worker._inflight:  # the first request is on its way: let the others pile up behind it
            threading.Event().wait(0.01)
        release.set()
        results = [future.result(30) for future in futures]
    assert all(result["numbers"] == numbers for result in results)
    assert worker.run({"date": "2024-03-26"})["stars"] == stars
    assert len(hits) == 1


def test_failures_are_not_cached(worker: EuroResults, http: FixtureHTTP) -> None:
    path = worker.base_url.split(str(http.port))[1] + "26-03-2024"
    http.add(path, Fixture(status=503))
    with pytest.raises(JobFailed):
        worker.run({"date": "2024-03-26"})
    http.add(path, Fixture(body=current_page("Tuesday 26th March 2024", *MARCH_2024[1:])))
    assert worker.run({"date": "2024-03-26"})["numbers"] == MARCH_2024[1]


@pytest.mark.skipif(not (DATA / "euromillions-draws.csv").exists(), reason="shared/data is absent")
def test_every_real_draw_parses_from_each_era_markup() -> None:
    with (DATA / "euromillions-draws.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) > 1900
    for row in rows:
        day = dt.date.fromisoformat(row["date"])
        numbers = [int(row[f"n{i}"]) for i in range(1, 6)]
        stars = [int(row["s1"]), int(row["s2"])]
        dashed = day.strftime("%d-%m-%Y")
        pages = [
            current_page(f"{day:%A} {day.day} {day:%B %Y}", numbers[::-1], stars[::-1]),
            balls_drawn_2020(numbers, stars, (numbers[::-1], stars[::-1])),
            tables_2013([(f"{day:%A} {day.day} {day:%B %Y}", dashed, numbers, stars)]),
        ]
        for page in pages:
            result = parse_page(page, day)
            assert (result["numbers"], result["stars"]) == (numbers, stars), row


def test_at_most_a_few_requests_at_a_time_to_the_site(worker: EuroResults, http: FixtureHTTP) -> None:
    dates = [dt.date(2024, 3, 1) + dt.timedelta(days=n) for n in range(31)]
    dates = [day for day in dates if day.weekday() in (1, 4)]
    lock, active, peak = threading.Lock(), [0], [0]
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def page(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        arrived.release()
        release.wait(30)
        day = dt.datetime.strptime(handler.path.rsplit("/", 1)[1], "%d-%m-%Y").date()
        body = current_page(f"{day:%A} {day.day} {day:%B %Y}", [1, 2, 3, 4, 5], [1, 2])
        with lock:
            active[0] -= 1
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    base = worker.base_url.split(str(http.port))[1]
    for day in dates:
        http.add(base + day.strftime("%d-%m-%Y"), page)
    with ThreadPoolExecutor(len(dates)) as pool:
        futures = [pool.submit(worker.run, {"date": day.isoformat()}) for day in dates]
        assert arrived.acquire(timeout=30) and arrived.acquire(timeout=30), "two requests are let through"
        assert not arrived.acquire(timeout=0.5), "a third request waits for one of the first two"
        release.set()
        assert [future.result(30)["date"] for future in futures] == [day.isoformat() for day in dates]
    assert peak[0] == 2
