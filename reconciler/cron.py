"""Quartz cron as ROMA Connect runs it: validate, normalise, describe, compute next fire times.

This is hand-written on purpose: no maintained Python library validates Quartz syntax (a leading
seconds field, `?`, `L`, `W`, `#`, an optional year field). croniter and its relatives implement
Unix cron, so they would accept five-field expressions the API rejects and reject valid Quartz.

Positions in `CronError` are 0-based indexes into the expression exactly as the caller passed it
(leading whitespace and runs of blanks included), so a caller can turn them into a file column.
"""

from __future__ import annotations

import calendar
import functools
import heapq
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from reconciler.model import ReconcilerError

MIN_LENGTH = 8
MAX_LENGTH = 255
FIRST_YEAR = 1970
LAST_YEAR = 2099

MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# Spelled out rather than taken from `calendar`, whose names follow the process locale.
_MONTH_WORDS = ("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December")
_DAY_WORDS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_ORDINALS = ("first", "second", "third", "fourth", "fifth")
_FIELD_NAMES = ("seconds", "minute", "hour", "day-of-month", "month", "day-of-week", "year")
_SHAPE = "second minute hour day-of-month month day-of-week [year]"

# Only ASCII is let in, so upper-casing keeps every character at its index and positions found
# in the normalised text map straight back to the original.
_BAD_CHAR = re.compile(r"[^0-9A-Za-z*?/,# \t\n\r\f\v-]")
_TOKEN = re.compile(r"\S+")
_DOM_SPECIAL = re.compile(r"L(?:-(\d+))?|LW|(\d+)W")
_DOW_SPECIAL = re.compile(r"(\d+|[A-Z]+)?L|(\d+|[A-Z]+)#(\d+)")

# 28 consecutive years inside 1901-2099 contain every combination of leap year and weekday of
# 1 January, so they stand in for "any year" in the static never-fires check.
_CYCLE = tuple(range(2000, 2028))
# Wider than any spring-forward gap in the tz database (a whole skipped day, as in Samoa 2011).
_MAX_GAP_WINDOW = timedelta(hours=26)


class CronError(ReconcilerError):
    """A syntax or range problem in a cron expression, located at `position`."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    lo: int
    hi: int
    max_step: int
    names: tuple[str, ...] = ()  # names[i] stands for lo + i
    hint: str = ""

    def fail(self, message: str, position: int) -> CronError:
        return CronError(f"{self.name} field: {message}", position)


_MINUTE = _Field("minute", 0, 59, 59)
_HOUR = _Field("hour", 0, 23, 23)
_DOM = _Field("day-of-month", 1, 31, 31)
_MONTH = _Field("month", 1, 12, 12, MONTH_NAMES)
_DOW = _Field("day-of-week", 1, 7, 7, DAY_NAMES, " (Quartz counts 1 = SUN to 7 = SAT)")
_YEAR = _Field("year", FIRST_YEAR, LAST_YEAR, LAST_YEAR - FIRST_YEAR)

RuleKind = Literal["any", "days", "last", "nearest", "last-weekday", "weekdays", "last-of", "nth"]


@dataclass(frozen=True, slots=True)
class DayRule:
    """Which days of a month fire, from day-of-month or day-of-week (the other one is `?`).

    kinds: `any` (`?`); `days` (day-of-month values); `last` (`L`, `L-n`: n days before the last
    day); `nearest` (`nW`); `last-weekday` (`LW`); `weekdays` (day-of-week values, 1 = Sunday);
    `last-of` (`nL`: last weekday n); `nth` (`n#k`: k-th weekday n).
    """

    kind: RuleKind
    values: tuple[int, ...] = ()
    n: int = 0
    k: int = 0


def normalise(expr: str) -> str:
    """Strip, collapse whitespace runs to one space, upper-case. Does not validate."""
    return " ".join(expr.split()).upper()


def parse(expr: str) -> Cron:
    """Validate `expr` and return it parsed; raise `CronError` at the first problem."""
    bad = _BAD_CHAR.search(expr)
    if bad is not None:
        # The field holding the character: the "x" joins the word it sits in, or starts one.
        index = len(_TOKEN.findall(expr[: bad.start()] + "x")) - 1
        where = f"{_FIELD_NAMES[index]} field: " if index < len(_FIELD_NAMES) else ""
        raise CronError(f"{where}unexpected character {bad.group()!r}", bad.start())
    try:
        return _parse_normalised(normalise(expr))
    except CronError as exc:
        raise CronError(exc.message, _original_position(expr, exc.position)) from None


def _original_position(expr: str, position: int) -> int:
    """Map an index in the normalised text back to `expr` (only whitespace differs)."""
    normal_start = 0
    original = 0
    for match in _TOKEN.finditer(expr):
        token = match.group()
        original = match.start()
        if position <= normal_start + len(token):
            return original + position - normal_start
        normal_start += len(token) + 1
        original = match.end()
    return original


@functools.lru_cache(maxsize=65536)
def _parse_normalised(text: str) -> Cron:
    # Validation runs over every schedule in a repository and many share an expression, hence
    # the cache; errors are not cached (lru_cache lets exceptions through) but they are rare.
    if not text:
        raise CronError("cron expression is empty; expected " + _SHAPE, 0)
    fields = text.split(" ")
    starts = [0]
    for field in fields[:-1]:
        starts.append(starts[-1] + len(field) + 1)
    if len(fields) not in (6, 7):
        hint = ""
        if len(fields) == 5:
            hint = "; Quartz starts with a seconds field, e.g. '0 0 2 * * ?' for 02:00 daily"
        position = starts[7] if len(fields) > 7 else 0
        raise CronError(f"expected 6 or 7 fields ({_SHAPE}), got {len(fields)}{hint}", position)
    # Six single-character fields already make 11 characters, so only the maximum can bite.
    if len(text) > MAX_LENGTH:
        raise CronError(f"expression is {len(text)} characters long; at most {MAX_LENGTH} "
                        "are allowed", MAX_LENGTH)
    if fields[0] != "0":
        raise CronError("seconds field must be 0 (ROMA Connect runs minute-level schedules)", 0)
    minutes = _parse_list(fields[1], starts[1], _MINUTE)
    hours = _parse_list(fields[2], starts[2], _HOUR)
    day_of_month = _parse_dom(fields[3], starts[3])
    months = _parse_list(fields[4], starts[4], _MONTH)
    day_of_week = _parse_dow(fields[5], starts[5])
    years = None
    if len(fields) == 7 and fields[6] != "*":
        years = _parse_list(fields[6], starts[6], _YEAR)
    if (day_of_month.kind == "any") == (day_of_week.kind == "any"):
        hint = ("both are '?'; put '*' in one of them" if day_of_month.kind == "any" else
                "write '?' in day-of-week for every day, e.g. '0 0 2 * * ?'")
        raise CronError(f"exactly one of day-of-month and day-of-week must be '?' ({hint})",
                        starts[5])
    return Cron(text, minutes, hours, day_of_month, months, day_of_week, years)


def _parse_value(text: str, position: int, field: _Field) -> int:
    if text.isdigit():
        value = int(text)
        if not field.lo <= value <= field.hi:
            raise field.fail(f"{value} is out of range {field.lo}-{field.hi}{field.hint}",
                             position)
        return value
    if text in field.names:
        return field.lo + field.names.index(text)
    if not text:
        raise field.fail("a number is missing", position)
    if "#" in text:
        raise field.fail("'#' is only allowed in day-of-week, as n#k (e.g. 6#3)",
                         position + text.index("#"))
    if field.names and text.isalpha():
        raise field.fail(f"unknown name {text!r}; use {field.names[0]}-{field.names[-1]} or "
                         f"{field.lo}-{field.hi}", position)
    for special in "LW":
        if special in text and not field.names and field is not _DOM:
            raise field.fail(f"'{special}' is only allowed in day-of-month or day-of-week",
                             position + text.index(special))
    wanted = "a number or a name" if field.names else "a number"
    raise field.fail(f"expected {wanted}, found {text!r}", position)


def _parse_item(item: str, position: int, field: _Field) -> range:
    """One list item: `*`, `a`, `a-b`, each optionally followed by `/step`."""
    if not item:
        raise field.fail("empty list item (two commas in a row, or a comma at an end)", position)
    if "?" in item:
        raise field.fail("'?' is only allowed in day-of-month or day-of-week",
                         position + item.index("?"))
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step_at = position + len(base) + 1
        if "/" in step_text:
            raise field.fail("only one '/' is allowed per item", step_at + step_text.index("/"))
        if not step_text.isdigit():
            raise field.fail(f"'/' must be followed by a step number, found {step_text!r}",
                             step_at)
        step = int(step_text)
        if not 1 <= step <= field.max_step:
            raise field.fail(f"step {step} must be 1-{field.max_step}", step_at)
        if not base:
            raise field.fail("'/' needs a start before it, e.g. */5 or 0/5", position)
    if base == "*":
        return range(field.lo, field.hi + 1, step)
    first, dash, last = base.partition("-")
    start = _parse_value(first, position, field)
    if not dash:
        # Quartz reads `a/n` as "from a to the end of the field, every n".
        return range(start, (field.hi if slash else start) + 1, step)
    end = _parse_value(last, position + len(first) + 1, field)
    if start > end:
        raise field.fail(f"range {base} runs backwards; the start must not be after the end "
                         "(wrap-around is not supported: split it into two ranges joined by ',')",
                         position)
    return range(start, end + 1, step)


def _parse_list(text: str, position: int, field: _Field) -> tuple[int, ...]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, position, field))
        position += len(item) + 1
    return tuple(sorted(values))


def _reject_special_in_list(text: str, position: int, field: _Field, special: re.Pattern[str],
                            allowed: str) -> None:
    # Quartz only evaluates these forms on their own; anything else malformed in the list is
    # left to the ordinary value parser, which says what it expected.
    for item in text.split(","):
        if special.fullmatch(item):
            raise field.fail(f"{item!r} cannot be combined with other values in a list "
                             f"({allowed} must stand alone)", position)
        position += len(item) + 1


def _whole_question_mark(text: str, position: int, field: _Field) -> None:
    if "?" in text and text != "?":
        raise field.fail("'?' must be the whole field", position + text.index("?"))


def _parse_dom(text: str, position: int) -> DayRule:
    if text == "?":
        return DayRule("any")
    _whole_question_mark(text, position, _DOM)
    if "," in text:
        _reject_special_in_list(text, position, _DOM, _DOM_SPECIAL, "L, L-n, nW and LW")
    elif "L" in text or "W" in text:
        match = _DOM_SPECIAL.fullmatch(text)
        if match is None:
            raise _DOM.fail(f"{text!r} is not valid; use L, L-n, nW or LW", position)
        if text == "L":
            return DayRule("last")
        if text == "LW":
            return DayRule("last-weekday")
        if match.group(1) is not None:
            offset = int(match.group(1))
            if not 1 <= offset <= 30:
                raise _DOM.fail(f"L-{offset}: the offset must be 1-30", position + 2)
            return DayRule("last", n=offset)
        day = int(match.group(2))
        if not 1 <= day <= 31:
            raise _DOM.fail(f"{day}W: the day must be 1-31", position)
        return DayRule("nearest", n=day)
    return DayRule("days", _parse_list(text, position, _DOM))


def _parse_dow(text: str, position: int) -> DayRule:
    if text == "?":
        return DayRule("any")
    _whole_question_mark(text, position, _DOW)
    if "," in text:
        _reject_special_in_list(text, position, _DOW, _DOW_SPECIAL, "L, nL and n#k")
    elif text == "L":
        return DayRule("weekdays", (7,))  # Quartz: `L` alone in day-of-week is 7, Saturday
    elif "L" in text or "#" in text:
        match = _DOW_SPECIAL.fullmatch(text)
        if match is None:
            raise _DOW.fail(f"{text!r} is not valid; use L, nL (e.g. 6L) or n#k (e.g. 6#3)",
                            position)
        if match.group(2) is None:
            return DayRule("last-of", n=_parse_value(match.group(1) or "", position, _DOW))
        day = _parse_value(match.group(2), position, _DOW)
        nth = int(match.group(3))
        if not 1 <= nth <= 5:
            raise _DOW.fail(f"{text}: the number after '#' must be 1-5",
                            position + len(match.group(2)) + 1)
        return DayRule("nth", n=day, k=nth)
    return DayRule("weekdays", _parse_list(text, position, _DOW))


@functools.lru_cache(maxsize=4096)
def _rule_days(rule: DayRule, first: int, ndays: int) -> tuple[int, ...]:
    """Days of a month matching `rule`; `first` is the weekday of day 1 (Monday = 0)."""

    # A month's answer depends only on its length and first weekday: 28 cases per rule.
    def quartz_dow(day: int) -> int:
        return (first + day) % 7 + 1  # 1 = Sunday .. 7 = Saturday

    kind, n = rule.kind, rule.n
    if kind == "days":
        return tuple(d for d in rule.values if d <= ndays)
    if kind == "last":
        return (ndays - n,) if ndays - n >= 1 else ()
    if kind == "nearest":
        # As Quartz: a Saturday moves to Friday and a Sunday to Monday, but never into another
        # month, so Saturday the 1st moves to Monday the 3rd and a last-day Sunday to Friday.
        if n > ndays:
            return ()
        weekday = quartz_dow(n)
        if weekday == 7:
            return (3,) if n == 1 else (n - 1,)
        if weekday == 1:
            return (n - 2,) if n == ndays else (n + 1,)
        return (n,)
    if kind == "last-weekday":
        return (ndays - {7: 1, 1: 2}.get(quartz_dow(ndays), 0),)
    if kind == "weekdays":
        return tuple(d for d in range(1, ndays + 1) if quartz_dow(d) in rule.values)
    if kind == "last-of":
        return (ndays - (quartz_dow(ndays) - n) % 7,)
    if kind == "nth":
        day = 1 + (n - quartz_dow(1)) % 7 + 7 * (rule.k - 1)
        return (day,) if day <= ndays else ()
    return tuple(range(1, ndays + 1))


def _offset(moment: datetime) -> timedelta:
    return moment.utcoffset() or timedelta(0)


@dataclass(frozen=True, slots=True)
class Cron:
    """A valid Quartz expression, fields expanded to sorted tuples; `years` None means any."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    day_of_month: DayRule
    months: tuple[int, ...]
    day_of_week: DayRule
    years: tuple[int, ...] | None

    @property
    def day_rule(self) -> DayRule:
        """The day rule that decides, i.e. whichever of the two day fields is not `?`."""
        return self.day_of_month if self.day_of_week.kind == "any" else self.day_of_week

    def days(self, year: int, month: int) -> tuple[int, ...]:
        """The days of `month` in `year` on which this expression fires."""
        return _rule_days(self.day_rule, *calendar.monthrange(year, month))

    def next_fire_times(self, after: datetime, zone: ZoneInfo, count: int = 3) -> list[datetime]:
        """The next `count` fire times strictly after the aware `after`, as aware times in `zone`.

        Fields are matched against wall-clock time in `zone`. Across daylight-saving changes this
        follows Java's lenient Calendar, which Quartz uses:

        - a wall time that does not exist (in a spring-forward gap) fires at the same wall time
          shifted forward by the gap: 02:30 in Europe/Berlin on 2026-03-29 fires at 03:30 CEST.
          An instant is never returned twice (02:30 shifted and a real 03:30 are one firing),
          and never one at or before `after`;
        - an ambiguous wall time (fall-back) fires once, at its first occurrence (fold=0).

        Candidate days are computed a month at a time, so an expression that fires rarely or
        never costs at most one step per month up to the end of 2099, where the search stops:
        fewer than `count` times (possibly none) come back if the expression runs out.
        """
        if after.utcoffset() is None:
            raise ValueError("after must be an aware datetime")
        try:
            after_utc = after.astimezone(UTC)
        except OverflowError:
            # Only at the ends of datetime's range: all of it before 1970 answers alike.
            if after.year > LAST_YEAR:
                return []
            after_utc = datetime(FIRST_YEAR - 1, 1, 1, tzinfo=UTC)
        if count <= 0 or after_utc.year > LAST_YEAR:
            return []
        found: list[datetime] = []
        pending: list[datetime] = []  # heap of instants (UTC) not yet known to be next
        for wall in self._candidates(self._scan_start(after_utc, zone)):
            # fold=0 gives exactly the lenient mapping: the pre-transition offset in a gap, the
            # first occurrence in an overlap. Instants are compared in UTC only, because
            # same-zone comparisons of aware datetimes ignore fold.
            instant = wall.replace(tzinfo=zone).astimezone(UTC)
            if instant > after_utc and instant not in pending and instant not in found:
                heapq.heappush(pending, instant)
            if instant.astimezone(zone).replace(tzinfo=None) == wall:
                # A real wall time: later candidates all map after it, so everything pending up
                # to it is settled. A shifted gap time can still be overtaken, so it waits.
                while pending and pending[0] <= instant and len(found) < count:
                    found.append(heapq.heappop(pending))
                if len(found) >= count:
                    break
        while pending and len(found) < count:
            found.append(heapq.heappop(pending))
        return [moment.astimezone(zone) for moment in found]

    @staticmethod
    def _scan_start(after_utc: datetime, zone: ZoneInfo) -> datetime:
        """The earliest wall time whose firing could still fall after `after_utc`."""
        if after_utc.year < FIRST_YEAR:
            return datetime(FIRST_YEAR, 1, 1)  # naive: a wall time
        local = after_utc.astimezone(zone)
        earlier = (after_utc - _MAX_GAP_WINDOW).astimezone(zone)
        # Wall times in a gap that just closed fire shifted forward, possibly after `after`.
        gap = max(_offset(local) - _offset(earlier), timedelta(0))
        start = local.replace(tzinfo=None, fold=0) - gap
        return max(start.replace(second=0, microsecond=0), datetime(FIRST_YEAR, 1, 1))

    def _candidates(self, start: datetime) -> Iterator[datetime]:
        """Matching wall times from `start` on, in wall-clock order, up to the end of 2099."""
        years: Sequence[int] = (self.years if self.years is not None
                                else range(start.year, LAST_YEAR + 1))
        start_day = (start.year, start.month, start.day)
        for year in years:
            if year < start.year:
                continue
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                for day in self.days(year, month):
                    if (year, month, day) < start_day:
                        continue
                    on_start_day = (year, month, day) == start_day
                    for hour in self.hours:
                        if on_start_day and hour < start.hour:
                            continue
                        for minute in self.minutes:
                            if on_start_day and (hour, minute) < (start.hour, start.minute):
                                continue
                            yield datetime(year, month, day, hour, minute)

    def never_fires_reason(self) -> str | None:
        """Why this expression can never fire, from the calendar alone, or None.

        Covers days that no selected month has (30 or 31 February, 31 in 30-day months), 29
        February in a year list without leap years, `L-n`, `nW` and fifth weekdays that never
        occur. Years already in the past are not considered: this check has no clock.
        """
        rule = self.day_rule
        may_miss = ((rule.kind == "days" and rule.values[0] > 28)
                    or (rule.kind in ("last", "nearest") and rule.n >= 28)
                    or (rule.kind == "nth" and rule.k == 5))
        if not may_miss:
            return None
        years = self.years if self.years is not None else _CYCLE
        if any(self.days(year, month) for year in years for month in self.months):
            return None
        if rule.kind == "nth":
            what = f"{_ORDINALS[rule.k - 1]} {_DAY_WORDS[rule.n - 1]}"
        elif rule.kind == "last":
            what = f"last day minus {rule.n}"
        else:
            what = "day " + _join([str(v) for v in rule.values or (rule.n,)], "or")
        where = _join([_MONTH_WORDS[m - 1] for m in self.months], "or")
        if self.years is not None:
            where += " of " + _join(_runs(self.years, str), "or")
        return f"there is no {what} in {where}"

    def describe(self) -> str:
        """Plain English, e.g. "at 09:30 on Monday to Friday"; the wording is stable."""
        parts = [_time_phrase(self.minutes, self.hours), self._day_phrase()]
        if len(self.months) < 12:
            parts.append("in " + _join(_runs(self.months, lambda m: _MONTH_WORDS[m - 1])))
        if self.years is not None:
            step = _step_of(self.years)
            if step is not None and step > 1 and len(self.years) >= 5:
                parts.append(f"in every {_nth(step)} year from {self.years[0]} to "
                             f"{self.years[-1]}")
            else:
                parts.append("in " + _join(_runs(self.years, str)))
        return " ".join(parts)

    def _day_phrase(self) -> str:
        rule = self.day_rule
        kind, n = rule.kind, rule.n
        if kind == "days":
            if len(rule.values) == 31:
                return "every day"
            noun = "day" if len(rule.values) == 1 else "days"
            return f"on {noun} {_join(_runs(rule.values, str))} of the month"
        if kind == "last":
            if n == 0:
                return "on the last day of the month"
            return f"{n} day{'s' if n > 1 else ''} before the last day of the month"
        if kind == "nearest":
            return f"on the nearest weekday to day {n} of the month"
        if kind == "last-weekday":
            return "on the last weekday of the month"
        if kind == "last-of":
            return f"on the last {_DAY_WORDS[n - 1]} of the month"
        if kind == "nth":
            return f"on the {_ORDINALS[rule.k - 1]} {_DAY_WORDS[n - 1]} of the month"
        if len(rule.values) == 7:
            return "every day"
        return "on " + _join(_runs(rule.values, lambda d: _DAY_WORDS[d - 1]))


def _time_phrase(minutes: tuple[int, ...], hours: tuple[int, ...]) -> str:
    times = [f"{h:02}:{m:02}" for h in hours for m in minutes]
    if len(times) <= 4:
        return "at " + _join(times)
    hour_step = _step_of(hours)
    if len(minutes) == 1:
        minute = minutes[0]
        if len(hours) == 24:
            return "every hour on the hour" if minute == 0 else f"every hour at minute {minute}"
        if hour_step is not None:
            every = "every hour" if hour_step == 1 else f"every {hour_step} hours"
            return f"{every} from {hours[0]:02}:{minute:02} to {hours[-1]:02}:{minute:02}"
        return "at " + _join(times)
    minute_step = _step_of(minutes)
    if len(minutes) == 60:
        what = "every minute"
    elif minute_step is not None and 60 % minute_step == 0 and minutes[0] == 0 \
            and len(minutes) == 60 // minute_step:
        # Only a step that divides the hour is an even cadence across hour boundaries.
        what = f"every {minute_step} minutes"
    else:
        what = f"at minutes {_join(_runs(minutes, str))}"
    if len(hours) == 24:
        return what if what.startswith("every") else what + " of every hour"
    if len(hours) == 1 or hour_step == 1:
        return f"{what} from {hours[0]:02}:00 to {hours[-1]:02}:59"
    return f"{what} during hours {_join(_runs(hours, str))}"


def _step_of(values: tuple[int, ...]) -> int | None:
    """The common difference if `values` (two or more) form one arithmetic progression."""
    if len(values) < 2:
        return None
    step = values[1] - values[0]
    return step if all(b - a == step for a, b in itertools.pairwise(values)) else None


def _runs(values: tuple[int, ...], label: Callable[[int], str]) -> list[str]:
    """Labels, with three or more consecutive values folded into "a to b"."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{label(values[i])} to {label(values[j])}")
        else:
            out.extend(label(v) for v in values[i:j + 1])
        i = j + 1
    return out


def _join(items: list[str], conjunction: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
