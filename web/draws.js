// The EuroMillions draw schedule: Fridays from 13 February 2004, Tuesdays and Fridays from 10 May 2011.
export const FIRST_DRAW = "2004-02-13";
const TWICE_WEEKLY = "2011-05-10";

export function isoDate(date) {
  return date.toISOString().slice(0, 10);
}

export function isDrawDay(iso, todayIso = isoDate(new Date())) {
  if (iso < FIRST_DRAW || iso > todayIso) return false;
  const weekday = new Date(iso + "T12:00:00Z").getUTCDay();
  return iso < TWICE_WEEKLY ? weekday === 5 : weekday === 2 || weekday === 5;
}

// Every draw day of a month ("YYYY-MM"), latest first.
export function drawDaysInMonth(month, todayIso = isoDate(new Date())) {
  const [year, number] = month.split("-").map(Number);
  const days = [];
  for (let day = 1; day <= 31; day++) {
    const date = new Date(Date.UTC(year, number - 1, day, 12));
    if (date.getUTCMonth() !== number - 1) break;
    const iso = isoDate(date);
    if (isDrawDay(iso, todayIso)) days.push(iso);
  }
  return days.reverse();
}
