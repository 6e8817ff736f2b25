"""euro.results: the EuroMillions numbers and stars drawn on a date, read from euro-millions.com."""

from __future__ import annotations

import datetime as dt
import re
import threading
from concurrent.futures import Future
from typing import Any

from bs4 import BeautifulSoup, Tag

from actors._base import BatchSpec, InvalidArgs, JobErrorCode, JobFailed, JobKind, PoolSpec, WorkerConfig
from actors._fetch import Fetcher, UrlGuard

FIRST_DRAW = dt.date(2004, 2, 13)
LAST_FRIDAY_ONLY = dt.date(2011, 5, 6)
TUESDAY, FRIDAY = 1, 4
MAX_PAGE_BYTES = 5 * 1024 * 1024
SITE_CONCURRENCY = 2
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DATE_TEXT = re.compile(
    r"\b(\d{1,2})\s*(?:st|nd|rd|th)?\s+(" + "|".join(MONTHS) + r")\s*,?\s+(\d{4})\b", re.IGNORECASE
)
DATE_IN_URL = re.compile(r"(?<!\d)(\d{2})-(\d{2})-(\d{4})(?!\d)")
INLINE_ORDER = re.compile(r'getElementById\(\s*["\']jsBallOrderCell["\']\s*\)\.innerHTML\s*=\s*"((?:[^"\\]|\\.)*)"')
MAIN_CLASSES = {"ball", "euro-ball"}
STAR_CLASSES = {"lucky-star", "euro-lucky-star"}


# The schedule, as `kinds` publishes it: the page builds its draw picker from this, never from a copy.
CALENDAR = {
    "first_draw": FIRST_DRAW.isoformat(),
    "eras": [  # ISO weekdays: Monday 1 .. Sunday 7
        {"until": LAST_FRIDAY_ONLY.isoformat(), "iso_weekdays": [FRIDAY + 1]},
        {"from": (LAST_FRIDAY_ONLY + dt.timedelta(days=1)).isoformat(), "iso_weekdays": [TUESDAY + 1, FRIDAY + 1]},
    ],
    "results_after": {"time": "21:30", "zone": "Europe/Paris"},  # a draw's results exist from then on its day
}


def human(day: dt.date) -> str:
    return f"{WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]} {day.year}"


def parse_date(text: str) -> dt.date:
    """A date typed as YYYY-MM-DD or DD-MM-YYYY."""
    for pattern in ("%Y-%m-%d", "%d-%m-%Y"):
        try:
            return dt.datetime.strptime(text.strip(), pattern).date()
        except ValueError:
            continue
    raise InvalidArgs(f"{text!r} is not a date; use YYYY-MM-DD or DD-MM-YYYY")


def draw_day_problem(day: dt.date, today: dt.date) -> str | None:
    """Why no draw took place on `day`, or None when one did (or will have by tonight)."""
    iso = day.isoformat()
    if day < FIRST_DRAW:
        return f"{iso} is before the first draw (Friday 13 February 2004)"
    if day > today:
        return f"{iso} is in the future"
    weekday = WEEKDAYS[day.weekday()]
    if day <= LAST_FRIDAY_ONLY and day.weekday() != FRIDAY:
        return f"{iso} is a {weekday}; draws were on Fridays only until 6 May 2011"
    if day > LAST_FRIDAY_ONLY and day.weekday() not in (TUESDAY, FRIDAY):
        return f"{iso} is a {weekday}; draws are on Tuesdays and Fridays"
    return None


def max_star(day: dt.date) -> int:
    if day <= LAST_FRIDAY_ONLY:
        return 9
    if day <= dt.date(2016, 9, 23):
        return 11
    return 12


def validate(args: dict[str, Any], today: dt.date | None = None) -> dict[str, Any]:
    raw = args.get("date")
    if not isinstance(raw, str):
        raise InvalidArgs("args.date must be a string, YYYY-MM-DD or DD-MM-YYYY")
    unknown = set(args) - {"date"}
    if unknown:
        raise InvalidArgs(f"unknown args: {', '.join(sorted(unknown))}")
    day = parse_date(raw)
    problem = draw_day_problem(day, today or dt.datetime.now(dt.UTC).date())
    if problem:
        raise InvalidArgs(problem)
    return {"date": day.isoformat()}


# --- the page ---------------------------------------------------------------------------------

def _classes(tag: Tag) -> set[str]:
    value: Any = tag.get("class") or []
    return set(value if isinstance(value, list) else str(value).split())


def _balls(container: Tag) -> tuple[list[str], list[str]]:
    """The texts of the main balls and the lucky stars under `container`, in page order."""
    main: list[str] = []
    stars: list[str] = []
    for tag in container.find_all(True):
        classes = _classes(tag)
        if classes & STAR_CLASSES:
            stars.append(tag.get_text(strip=True))
        elif classes & MAIN_CLASSES:
            main.append(tag.get_text(strip=True))
    return main, stars


def _date_in_text(text: str) -> dt.date | None:
    match = DATE_TEXT.search(text)
    if not match:
        return None
    day, month, year = match.groups()
    try:
        return dt.date(int(year), [m.lower() for m in MONTHS].index(month.lower()) + 1, int(day))
    except ValueError:
        return None


def _date_in_url(url: str) -> dt.date | None:
    match = DATE_IN_URL.search(url)
    if not match:
        return None
    day, month, year = (int(part) for part in match.groups())
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _group_date(group: Tag) -> dt.date | None:
    """The date a group of balls is labelled with: a results link inside it, or a heading just before it."""
    for link in group.find_all("a", href=True):
        found = _date_in_url(str(link["href"]))
        if found:
            return found
    node: Tag | None = group
    for _ in range(4):
        if node is None:
            break
        for sibling in node.find_previous_siblings(limit=3):
            text = sibling.get_text(" ", strip=True) if isinstance(sibling, Tag) else str(sibling)
            found = _date_in_text(text)
            if found:
                return found
        node = node.parent
    return None


def _page_date(soup: BeautifulSoup) -> dt.date | None:
    for tag in soup.find_all(["link", "meta"]):
        rel: Any = tag.get("rel") or []
        if "canonical" in rel or tag.get("property") == "og:url":
            found = _date_in_url(str(tag.get("href") or tag.get("content") or ""))
            if found:
                return found
    return None


def _groups(soup: BeautifulSoup) -> list[Tag]:
    """Blocks that each hold one draw's balls, for pages without a ballsAscending/ballsDrawn block."""
    groups: list[Tag] = []
    for tag in soup.find_all(True):
        if not (_classes(tag) & (MAIN_CLASSES | STAR_CLASSES)):
            continue
        group = tag.find_parent("tr", class_="resultRow") or tag.find_parent("table") or tag.parent
        if group is not None and all(group is not seen for seen in groups):
            groups.append(group)
    return groups


def parse_page(html: str | bytes, day: dt.date) -> dict[str, Any]:
    """The draw of `day` from a euro-millions.com page, in any markup the site has used since 2013."""
    soup = BeautifulSoup(html, "html.parser")
    page_date = _page_date(soup)
    if page_date and page_date != day:
        raise JobFailed(JobErrorCode.PARSE_FAILED, f"the page is for {page_date.isoformat()}, not {day.isoformat()}")
    ascending = soup.find(id="ballsAscending")
    drawn = soup.find(id="ballsDrawn")
    order_cell = soup.find(id="jsBallOrderCell")
    source: Tag | None = None
    drawn_order: tuple[list[str], list[str]] | None = None
    if isinstance(drawn, Tag) and any(_balls(drawn)):
        drawn_order = _balls(drawn)
    for candidate in (ascending, drawn, order_cell):
        if isinstance(candidate, Tag) and any(_balls(candidate)):
            source = candidate
            break
    if source is None:
        script = INLINE_ORDER.search(str(html if isinstance(html, str) else html.decode("utf-8", "replace")))
        if script:
            fragment = script.group(1).replace('\\"', '"').replace("\\/", "/")
            source = BeautifulSoup(fragment, "html.parser")
    if source is None:
        groups = _groups(soup)
        dated = [group for group in groups if _group_date(group) == day]
        if dated:
            source = dated[0]
        elif len(groups) == 1:
            source = groups[0]
        elif groups:
            seen = sorted({d.isoformat() for d in map(_group_date, groups) if d})
            raise JobFailed(JobErrorCode.PARSE_FAILED, f"the page lists other draws ({', '.join(seen) or 'undated'}), "
                                            f"not {day.isoformat()}")
    if source is None:
        raise JobFailed(JobErrorCode.PARSE_FAILED, "the page has no results block (no balls or lucky stars found)")
    labelled = _group_date(source) if isinstance(source, Tag) and source.parent is not None else None
    if labelled and labelled != day:
        message = f"the page shows the draw of {labelled.isoformat()}, not {day.isoformat()}"
        raise JobFailed(JobErrorCode.PARSE_FAILED, message)
    main, stars = _balls(source)
    numbers = _check(main, stars, day)
    result: dict[str, Any] = {"date": day.isoformat(), "numbers": sorted(numbers[0]), "stars": sorted(numbers[1])}
    if drawn_order is not None:
        order = _check(*drawn_order, day)
        if sorted(order[0]) == result["numbers"] and sorted(order[1]) == result["stars"]:
            result["drawn_order"] = {"numbers": order[0], "stars": order[1]}
    return result


def _check(main: list[str], stars: list[str], day: dt.date) -> tuple[list[int], list[int]]:
    if any(text.strip("-\u2013 ") == "" for text in main + stars):
        raise JobFailed(JobErrorCode.NOT_FOUND, f"the result of {human(day)} is not published yet")
    try:
        numbers = [int(text) for text in main]
        lucky = [int(text) for text in stars]
    except ValueError:
        message = f"the page shows balls that are not numbers: {main + stars}"
        raise JobFailed(JobErrorCode.PARSE_FAILED, message) from None
    top = max_star(day)
    seen = f"numbers {numbers}, stars {lucky}"
    if len(numbers) != 5 or len(set(numbers)) != 5 or not all(1 <= n <= 50 for n in numbers):
        raise JobFailed(JobErrorCode.PARSE_FAILED, f"expected 5 distinct numbers from 1 to 50, saw {seen}")
    if len(lucky) != 2 or len(set(lucky)) != 2 or not all(1 <= s <= top for s in lucky):
        raise JobFailed(JobErrorCode.PARSE_FAILED, f"expected 2 distinct lucky stars from 1 to {top}, saw {seen}")
    return numbers, lucky


# --- the worker -------------------------------------------------------------------------------

class EuroResults:
    """Fetches and parses one results page per draw; a published draw never changes, so it is cached."""

    def __init__(self, config: WorkerConfig) -> None:
        self.base_url = config.euro_url
        # The operator's URL is trusted: the guard applies to user-supplied URLs only.
        self.fetcher = Fetcher(UrlGuard(allow_private=True), timeout=config.fetch_timeout,
                               max_bytes=MAX_PAGE_BYTES)
        self._site = threading.BoundedSemaphore(SITE_CONCURRENCY)
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        self._inflight: dict[str, Future[dict[str, Any]]] = {}

    def run(self, args: dict[str, Any]) -> dict[str, Any]:
        key = args["date"]
        with self._lock:
            if key in self._cache:
                return dict(self._cache[key])
            shared = self._inflight.get(key)
            if shared is None:
                owned: Future[dict[str, Any]] = Future()
                self._inflight[key] = owned
        if shared is not None:
            return dict(shared.result())
        try:
            result = self._fetch(dt.date.fromisoformat(key))
        except BaseException as exc:
            owned.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        with self._lock:
            self._cache[key] = result
        owned.set_result(result)
        return dict(result)

    def _fetch(self, day: dt.date) -> dict[str, Any]:
        url = self.base_url + day.strftime("%d-%m-%Y")
        with self._site:
            download = self.fetcher.get(url)
        if download.status == 404:
            raise JobFailed(JobErrorCode.NOT_FOUND, f"euro-millions.com has no result page for {human(day)} (HTTP 404)")
        if download.status >= 400:
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"HTTP {download.status} from {url}")
        if not download.body.strip():
            raise JobFailed(JobErrorCode.PARSE_FAILED, f"{url} returned an empty page")
        return parse_page(download.body, day)


KIND = JobKind(
    name="euro.results",
    actor_name="euro",
    description="The EuroMillions numbers and lucky stars drawn on a date.",
    schema={
        "type": "object",
        "properties": {
            "date": {"type": "string", "description": "a draw date, YYYY-MM-DD or DD-MM-YYYY",
                     "pattern": r"^(\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{4})$"},
        },
        "required": ["date"],
        "additionalProperties": False,
    },
    validate=validate,
    worker=EuroResults,
    pool=PoolSpec(size=1, max_concurrency=8),
    cacheable=True,  # a published draw never changes
    batch=BatchSpec(max_size=8),  # as many as the actor fetches at once
    example={"date": "2024-03-26"},
    published={"calendar": CALENDAR},
    shortcut=("euro", "date", "EuroMillions draw of <date> (YYYY-MM-DD or DD-MM-YYYY)"),
    form={"title": "EuroMillions results", "button": "Get numbers",
          "fields": [{"arg": "date", "label": "Draw", "input": "draw-date"}]},
)
