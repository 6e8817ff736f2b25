// EuroMillions draw days, from the calendar the server publishes with the euro.results kind (`kinds`):
// {first_draw, eras: [{from?, until?, iso_weekdays}], results_after: {time, zone}}.

export function isoDate(date) {
  return date.toISOString().slice(0, 10);
}

function isoWeekday(iso) {
  return new Date(iso + "T12:00:00Z").getUTCDay() || 7;  // Monday 1 .. Sunday 7
}

// Today's date, and whether its draw's results can exist yet, in the zone the draw takes place in.
export function drawClock(calendar, now = new Date()) {
  const { time, zone } = calendar.results_after;
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-CA", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    hourCycle: "h23",
  }).formatToParts(now).map((part) => [part.type, part.value]));
  return { today: `${parts.year}-${parts.month}-${parts.day}`, resultsOut: `${parts.hour}:${parts.minute}` >= time };
}

export function isDrawDay(calendar, iso, clock = drawClock(calendar)) {
  if (iso < calendar.first_draw || iso > clock.today || (iso === clock.today && !clock.resultsOut)) return false;
  const era = calendar.eras.find((e) => (!e.from || iso >= e.from) && (!e.until || iso <= e.until));
  return Boolean(era && era.iso_weekdays.includes(isoWeekday(iso)));
}

// Every draw of a month ("YYYY-MM") whose results can exist, latest first.
export function drawDaysInMonth(calendar, month, clock = drawClock(calendar)) {
  const [year, number] = month.split("-").map(Number);
  const days = [];
  for (let day = 1; day <= 31; day++) {
    const date = new Date(Date.UTC(year, number - 1, day, 12));
    if (date.getUTCMonth() !== number - 1) break;
    const iso = isoDate(date);
    if (isDrawDay(calendar, iso, clock)) days.push(iso);
  }
  return days.reverse();
}

// The latest draw whose results can exist.
export function latestDraw(calendar, clock = drawClock(calendar)) {
  const date = new Date(clock.today + "T12:00:00Z");
  for (let back = 0; back < 14; back++) {
    const iso = isoDate(date);
    if (isDrawDay(calendar, iso, clock)) return iso;
    date.setUTCDate(date.getUTCDate() - 1);
  }
  return calendar.first_draw;
}
