from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import cron
from reconciler.cron import CronError, normalise, parse
from reconciler.model import ReconcilerError

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
CEST = timezone(timedelta(hours=2))
CET = timezone(timedelta(hours=1))
CST = timezone(timedelta(hours=8))


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[misc]


GOOD = [
    "0 0/15 1-4 * * ?",  # the ROMA Connect documentation's example
    "0 0 2 * * ?",
    "0 0 0 * * ?",
    "0 * * * * ?",
    "0 */5 * * * ?",
    "0 0 */2 * * ?",
    "0 30 9 ? * MON-FRI",
    "0 30 9 ? * mon-fri",
    "0 0 8 ? * SUN,SAT",
    "0 0 8 ? * 1,7",
    "0 0 8 ? * 2-6",
    "0 0 0 1 JAN ?",
    "0 0 0 1 jan-mar ?",
    "0 0 0 1 JAN,APR,JUL,OCT ?",
    "0 0 0 1 1/3 ?",
    "0 0 12 1-10/2 * ?",
    "0 5-55/10 8-18/2 * * ?",
    "0 0,15,30,45 * * * ?",
    "0 0 0 L * ?",
    "0 30 23 L * ?",
    "0 0 0 L-3 * ?",
    "0 0 0 L-30 * ?",
    "0 0 6 15W * ?",
    "0 0 6 1W * ?",
    "0 0 6 31W * ?",
    "0 0 0 LW * ?",
    "0 45 17 ? * 6L",
    "0 45 17 ? * FRIL",
    "0 0 8 ? * 6#3",
    "0 0 8 ? * FRI#3",
    "0 0 8 ? * 2#5",
    "0 0 0 ? * L",
    "0 0 12 * * ? 2027",
    "0 0 12 * * ? 2027,2029",
    "0 0 12 * * ? 2027-2030",
    "0 0 12 * * ? 2026/2",
    "0 0 12 * * ? *",
    "0 0 12 * * ? 1970",
    "0 0 12 * * ? 2099",
    "0\t0\t2\t*\t*\t?",
    "  0   0  2 * *   ?  ",
    "0 0 2 ? * *",
    "0 05 09 * * ?",
    "0 59 23 31 12 ? 2099",
    "0 0 0 29 2 ?",
    "0 0-59/59 0-23/23 1-31/31 1-12/12 ? 1970-2099/129",
    "0 0 0 ? JAN-DEC SUN-SAT",
    "0 0 0 ? * */2",
]


@pytest.mark.parametrize("expr", GOOD)
def test_good_expressions_parse(expr: str) -> None:
    parsed = parse(expr)
    assert parsed.expression == normalise(expr)
    assert parsed.describe()


BAD = [
    ("", "cron expression is empty", 0),
    ("   ", "cron expression is empty", 0),
    ("0 0 2 * *", "expected 6 or 7 fields (second minute hour day-of-month month day-of-week "
     "[year]), got 5", 0),
    ("  0 0 2 * *", "Quartz starts with a seconds field", 2),
    ("0 0 0 * * ? 2020 5", "got 8", 17),
    ("0 0 0 * * ? " + ",".join(["2000"] * 60), "at most 255", 255),
    ("5 0 0 * * ?", "seconds field must be 0 (ROMA Connect runs minute-level schedules)", 0),
    ("  00 0 0 * * ?", "seconds field must be 0", 2),
    ("0 75 2 * * ?", "minute field: 75 is out of range 0-59", 2),
    (" 0  75 2 * * ?", "minute field: 75 is out of range 0-59", 4),
    ("\t0 0 25 * * ?", "hour field: 25 is out of range 0-23", 5),
    ("0 0 0 0 * ?", "day-of-month field: 0 is out of range 1-31", 6),
    ("0 0 0 32 * ?", "day-of-month field: 32 is out of range 1-31", 6),
    ("0 0 0 1 13 ?", "month field: 13 is out of range 1-12", 8),
    ("0 0 0 ? * 8", "day-of-week field: 8 is out of range 1-7", 10),
    ("0 0 0 ? * 0", "Quartz counts 1 = SUN to 7 = SAT", 10),
    ("0 0 0 * * ? 1969", "year field: 1969 is out of range 1970-2099", 12),
    ("0 0 0 * * ? 2100", "year field: 2100 is out of range 1970-2099", 12),
    ("0 0 0 * * *", "exactly one of day-of-month and day-of-week must be '?'", 10),
    ("0 0 0 ? * ?", "exactly one of day-of-month and day-of-week must be '?'", 10),
    ("0 0 0 1 * MON", "exactly one of day-of-month and day-of-week must be '?'", 10),
    ("0 ? 0 * * ?", "minute field: '?' is only allowed in day-of-month or day-of-week", 2),
    ("0 0 0 * ? ?", "month field: '?' is only allowed", 8),
    ("0 0 0 * * ? ?", "year field: '?' is only allowed", 12),
    ("0 0 0 ?,1 * ?", "day-of-month field: '?' must be the whole field", 6),
    ("0 0 0 ? * 5-2", "day-of-week field: range 5-2 runs backwards", 10),
    ("0 0 0 ? * FRI-MON", "the start must not be after the end", 10),
    ("0 0 22-2 * * ?", "hour field: range 22-2 runs backwards", 4),
    ("0 0 0 * DEC-JAN ?", "month field: range DEC-JAN runs backwards", 8),
    ("0 0/0 0 * * ?", "minute field: step 0 must be 1-59", 4),
    ("0 0/60 0 * * ?", "minute field: step 60 must be 1-59", 4),
    ("0 0 */24 * * ?", "hour field: step 24 must be 1-23", 6),
    ("0 0 0 */32 * ?", "day-of-month field: step 32 must be 1-31", 8),
    ("0 0 0 1 */13 ?", "month field: step 13 must be 1-12", 10),
    ("0 0 0 ? * */8", "day-of-week field: step 8 must be 1-7", 12),
    ("0 0 0 * * ? */130", "year field: step 130 must be 1-129", 14),
    ("0 0/ 0 * * ?", "minute field: '/' must be followed by a step number", 4),
    ("0 0/5/2 0 * * ?", "minute field: only one '/' is allowed", 5),
    ("0 /5 0 * * ?", "minute field: '/' needs a start before it", 2),
    ("0 1- 0 * * ?", "minute field: a number is missing", 4),
    ("0 -1 0 * * ?", "minute field: a number is missing", 2),
    ("0 1,,2 0 * * ?", "minute field: empty list item", 4),
    ("0 1, 0 * * ?", "minute field: empty list item", 4),
    ("0 L 0 * * ?", "minute field: 'L' is only allowed in day-of-month or day-of-week", 2),
    ("0 0 5W * * ?", "hour field: 'W' is only allowed in day-of-month or day-of-week", 5),
    ("0 1#2 0 * * ?", "minute field: '#' is only allowed in day-of-week", 3),
    ("0 0 0 1#2 * ?", "day-of-month field: '#' is only allowed in day-of-week", 7),
    ("0 0 0 * JANUARY ?", "month field: unknown name 'JANUARY'; use JAN-DEC or 1-12", 8),
    ("0 0 0 ? * MONDAY", "day-of-week field: unknown name 'MONDAY'; use SUN-SAT or 1-7", 10),
    ("0 0 MON * * ?", "hour field: expected a number, found 'MON'", 4),
    ("0 0 0 * * ? 20x6", "year field: expected a number, found '20X6'", 12),
    ("0 0 0 L,5 * ?", "day-of-month field: 'L' cannot be combined with other values", 6),
    ("0 0 0 1,15W * ?", "day-of-month field: '15W' cannot be combined", 8),
    ("0 0 0 LW,L-2 * ?", "cannot be combined", 6),
    ("0 0 0 ? * 6L,2", "day-of-week field: '6L' cannot be combined", 10),
    ("0 0 0 ? * 1,6#3", "day-of-week field: '6#3' cannot be combined", 12),
    ("0 0 0 1,5-L * ?", "day-of-month field: expected a number, found 'L'", 10),
    ("0 0 0 1,JUL * ?", "day-of-month field: expected a number, found 'JUL'", 8),
    ("0 0 0 ? * 1,L", "day-of-week field: 'L' cannot be combined", 12),
    ("0 0 0 ? * 2-6L,1", "day-of-week field: expected a number or a name, found '6L'", 12),
    ("0 0 0 L-31 * ?", "day-of-month field: L-31: the offset must be 1-30", 8),
    ("0 0 0 L-0 * ?", "day-of-month field: L-0: the offset must be 1-30", 8),
    ("0 0 0 32W * ?", "day-of-month field: 32W: the day must be 1-31", 6),
    ("0 0 0 0W * ?", "day-of-month field: 0W: the day must be 1-31", 6),
    ("0 0 0 W * ?", "day-of-month field: 'W' is not valid; use L, L-n, nW or LW", 6),
    ("0 0 0 1-5W * ?", "day-of-month field: '1-5W' is not valid", 6),
    ("0 0 0 L- * ?", "day-of-month field: 'L-' is not valid", 6),
    ("0 0 0 ? * 6#6", "day-of-week field: 6#6: the number after '#' must be 1-5", 12),
    ("0 0 0 ? * 6#0", "the number after '#' must be 1-5", 12),
    ("0 0 0 ? * 9#2", "day-of-week field: 9 is out of range 1-7", 10),
    ("0 0 0 ? * 8L", "day-of-week field: 8 is out of range 1-7", 10),
    ("0 0 0 ? * 1#", "day-of-week field: '1#' is not valid; use L, nL (e.g. 6L) or n#k", 10),
    ("0 0 0 ? * 2-6L", "day-of-week field: '2-6L' is not valid", 10),
    ("0 0 0 1. * ?", "day-of-month field: unexpected character '.'", 7),
    ("0 0 0 * * ? 2026 é", "unexpected character 'é'", 17),
    ("0 0\u00a00 * * ?", "minute field: unexpected character", 3),
    ("0 0 0 ? * ſun", "day-of-week field: unexpected character 'ſ'", 10),
]


@pytest.mark.parametrize(("expr", "message", "position"), BAD)
def test_bad_expressions_are_located(expr: str, message: str, position: int) -> None:
    with pytest.raises(CronError) as info:
        parse(expr)
    assert message in info.value.message
    assert info.value.position == position
    assert str(info.value) == info.value.message
    assert isinstance(info.value, ReconcilerError)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 0 2 * * ?", "0 0 2 * * ?"),
        ("  0   0\t2 *  * ?  ", "0 0 2 * * ?"),
        ("0 30 9 ? * mon-fri", "0 30 9 ? * MON-FRI"),
        ("0 0 0 lw jan,jul ?", "0 0 0 LW JAN,JUL ?"),
        ("0 0 8 ? * fril\n", "0 0 8 ? * FRIL"),
        ("", ""),
        ("not a cron", "NOT A CRON"),
    ],
)
def test_normalise(expr: str, expected: str) -> None:
    assert normalise(expr) == expected


def test_parse_is_cached_by_normalised_text() -> None:
    assert parse("0 0 2 * * ?") is parse("  0 0 2  * * ?")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 0 2 * * ?", "at 02:00 every day"),
        ("0 0 2 ? * *", "at 02:00 every day"),
        ("0 0/15 1-4 * * ?", "every 15 minutes from 01:00 to 04:59 every day"),
        ("0 0/15 9-18 ? * MON-FRI", "every 15 minutes from 09:00 to 18:59 on Monday to Friday"),
        ("0 30 9 ? * MON-FRI", "at 09:30 on Monday to Friday"),
        ("0 0 8 ? * 2,4,6", "at 08:00 on Monday, Wednesday and Friday"),
        ("0 0 0 ? * L", "at 00:00 on Saturday"),
        ("0 * * * * ?", "every minute every day"),
        ("0 0 * * * ?", "every hour on the hour every day"),
        ("0 30 * * * ?", "every hour at minute 30 every day"),
        ("0 0 */2 * * ?", "every 2 hours from 00:00 to 22:00 every day"),
        ("0 5/15 * * * ?", "at minutes 5, 20, 35 and 50 of every hour every day"),
        ("0 0/15 1,5,9 * * ?", "every 15 minutes during hours 1, 5 and 9 every day"),
        ("0 0,30 8,17 * * ?", "at 08:00, 08:30, 17:00 and 17:30 every day"),
        ("0 0 0 L * ?", "at 00:00 on the last day of the month"),
        ("0 0 0 L-3 * ?", "at 00:00 3 days before the last day of the month"),
        ("0 0 0 L-1 * ?", "at 00:00 1 day before the last day of the month"),
        ("0 0 0 LW * ?", "at 00:00 on the last weekday of the month"),
        ("0 0 6 15W * ?", "at 06:00 on the nearest weekday to day 15 of the month"),
        ("0 0 8 ? * 6#3", "at 08:00 on the third Friday of the month"),
        ("0 45 17 ? * 6L", "at 17:45 on the last Friday of the month"),
        ("0 0 0 1,15 * ?", "at 00:00 on days 1 and 15 of the month"),
        ("0 0 0 1-5 * ?", "at 00:00 on days 1 to 5 of the month"),
        ("0 0 0 10 * ?", "at 00:00 on day 10 of the month"),
        ("0 0 2 * JAN,JUL ?", "at 02:00 every day in January and July"),
        ("0 0 2 1 JAN-MAR ?", "at 02:00 on day 1 of the month in January to March"),
        ("0 0 2 * * ? 2027", "at 02:00 every day in 2027"),
        ("0 0 2 * * ? 2027,2029", "at 02:00 every day in 2027 and 2029"),
        ("0 0 2 * * ? 2026/2", "at 02:00 every day in every 2nd year from 2026 to 2098"),
    ],
)
def test_describe(expr: str, expected: str) -> None:
    assert parse(expr).describe() == expected


@pytest.mark.parametrize(
    ("expr", "after", "zone", "expected"),
    [
        pytest.param("0 0 2 * * ?", sh(2026, 5, 10, 3, 0), SHANGHAI,
                     [sh(2026, 5, 11, 2, 0), sh(2026, 5, 12, 2, 0), sh(2026, 5, 13, 2, 0)],
                     id="daily-shanghai"),
        pytest.param("0 0 2 * * ?", sh(2026, 5, 10, 1, 59), SHANGHAI,
                     [sh(2026, 5, 10, 2, 0), sh(2026, 5, 11, 2, 0), sh(2026, 5, 12, 2, 0)],
                     id="daily-same-day"),
        pytest.param("0 0 2 * * ?", sh(2026, 5, 10, 2, 0), SHANGHAI,
                     [sh(2026, 5, 11, 2, 0), sh(2026, 5, 12, 2, 0), sh(2026, 5, 13, 2, 0)],
                     id="strictly-after"),
        pytest.param("0 0/15 1-4 * * ?", sh(2026, 5, 10, 4, 40), SHANGHAI,
                     [sh(2026, 5, 10, 4, 45), sh(2026, 5, 11, 1, 0), sh(2026, 5, 11, 1, 15)],
                     id="window"),
        pytest.param("0 0 0 L * ?", sh(2026, 1, 15), SHANGHAI,
                     [sh(2026, 1, 31), sh(2026, 2, 28), sh(2026, 3, 31)], id="last-day"),
        pytest.param("0 0 0 L * ?", sh(2028, 2, 1), SHANGHAI,
                     [sh(2028, 2, 29), sh(2028, 3, 31), sh(2028, 4, 30)], id="last-day-leap"),
        pytest.param("0 0 0 L-3 * ?", sh(2026, 1, 1), SHANGHAI,
                     [sh(2026, 1, 28), sh(2026, 2, 25), sh(2026, 3, 28)], id="last-minus-3"),
        # 2026-01-31 and 2026-02-28 are Saturdays, 2026-05-31 is a Sunday.
        pytest.param("0 0 0 LW * ?", sh(2026, 1, 1), SHANGHAI,
                     [sh(2026, 1, 30), sh(2026, 2, 27), sh(2026, 3, 31)], id="lw"),
        pytest.param("0 0 0 LW * ?", sh(2026, 5, 1), SHANGHAI,
                     [sh(2026, 5, 29), sh(2026, 6, 30), sh(2026, 7, 31)], id="lw-sunday"),
        # 2026-02-15 and 2026-03-15 are Sundays, 2026-08-15 is a Saturday.
        pytest.param("0 0 6 15W * ?", sh(2026, 2, 1), SHANGHAI,
                     [sh(2026, 2, 16, 6), sh(2026, 3, 16, 6), sh(2026, 4, 15, 6)],
                     id="15w-sunday"),
        pytest.param("0 0 6 15W * ?", sh(2026, 7, 20), SHANGHAI,
                     [sh(2026, 8, 14, 6), sh(2026, 9, 15, 6), sh(2026, 10, 15, 6)],
                     id="15w-saturday"),
        # 2026-08-01 is a Saturday: Quartz does not step back into July, it moves to Monday 3rd.
        pytest.param("0 0 6 1W * ?", sh(2026, 7, 15), SHANGHAI,
                     [sh(2026, 8, 3, 6), sh(2026, 9, 1, 6), sh(2026, 10, 1, 6)],
                     id="1w-saturday"),
        # 2026-05-31 is a Sunday: stays in May (Friday 29th); June has no 31st.
        pytest.param("0 0 6 31W * ?", sh(2026, 5, 1), SHANGHAI,
                     [sh(2026, 5, 29, 6), sh(2026, 7, 31, 6), sh(2026, 8, 31, 6)],
                     id="31w-sunday"),
        pytest.param("0 0 8 ? * 6#3", sh(2026, 1, 1), SHANGHAI,
                     [sh(2026, 1, 16, 8), sh(2026, 2, 20, 8), sh(2026, 3, 20, 8)],
                     id="third-friday"),
        pytest.param("0 0 8 ? * 2#5", sh(2026, 1, 1), SHANGHAI,
                     [sh(2026, 3, 30, 8), sh(2026, 6, 29, 8), sh(2026, 8, 31, 8)],
                     id="fifth-monday"),
        pytest.param("0 45 17 ? * 6L", sh(2026, 1, 1), SHANGHAI,
                     [sh(2026, 1, 30, 17, 45), sh(2026, 2, 27, 17, 45), sh(2026, 3, 27, 17, 45)],
                     id="last-friday"),
        pytest.param("0 30 9 ? * MON-FRI", sh(2026, 1, 1, 10), SHANGHAI,
                     [sh(2026, 1, 2, 9, 30), sh(2026, 1, 5, 9, 30), sh(2026, 1, 6, 9, 30)],
                     id="weekdays"),
        pytest.param("0 0 12 1 1 ? 2027,2029", sh(2026, 5, 1), SHANGHAI,
                     [sh(2027, 1, 1, 12), sh(2029, 1, 1, 12)], id="year-list"),
        pytest.param("0 0 0 29 2 ?", sh(2024, 3, 1), SHANGHAI,
                     [sh(2028, 2, 29), sh(2032, 2, 29), sh(2036, 2, 29)], id="leap-day"),
        pytest.param("0 59 23 31 12 ?", sh(2099, 12, 31, 23, 58), SHANGHAI,
                     [sh(2099, 12, 31, 23, 59)], id="last-minute-of-2099"),
        # after in UTC, zone Berlin: 07:30Z is 09:30 CEST, past today's 09:00.
        pytest.param("0 0 9 * * ?", datetime(2026, 7, 1, 7, 30, tzinfo=UTC), BERLIN,
                     [datetime(2026, 7, 2, 9, tzinfo=CEST), datetime(2026, 7, 3, 9, tzinfo=CEST),
                      datetime(2026, 7, 4, 9, tzinfo=CEST)], id="utc-after-berlin-zone"),
        pytest.param("0 0 9 * * ?", datetime(2026, 7, 1, 6, 59, tzinfo=UTC), BERLIN,
                     [datetime(2026, 7, 1, 9, tzinfo=CEST), datetime(2026, 7, 2, 9, tzinfo=CEST),
                      datetime(2026, 7, 3, 9, tzinfo=CEST)], id="utc-after-berlin-same-day"),
        # Spring forward in Berlin on 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        pytest.param("0 30 2 * * ?", datetime(2026, 3, 28, 12, tzinfo=CET), BERLIN,
                     [datetime(2026, 3, 29, 3, 30, tzinfo=CEST),
                      datetime(2026, 3, 30, 2, 30, tzinfo=CEST),
                      datetime(2026, 3, 31, 2, 30, tzinfo=CEST)], id="dst-gap"),
        pytest.param("0 30 2 * * ?", datetime(2026, 3, 29, 3, 10, tzinfo=CEST), BERLIN,
                     [datetime(2026, 3, 29, 3, 30, tzinfo=CEST),
                      datetime(2026, 3, 30, 2, 30, tzinfo=CEST)], id="dst-gap-after-jump"),
        pytest.param("0 30 2 * * ?", datetime(2026, 3, 29, 3, 30, tzinfo=CEST), BERLIN,
                     [datetime(2026, 3, 30, 2, 30, tzinfo=CEST)], id="dst-gap-not-before-after"),
        pytest.param("0 0/30 * * * ?", datetime(2026, 3, 29, 1, 10, tzinfo=CET), BERLIN,
                     [datetime(2026, 3, 29, 1, 30, tzinfo=CET),
                      datetime(2026, 3, 29, 3, 0, tzinfo=CEST),
                      datetime(2026, 3, 29, 3, 30, tzinfo=CEST),
                      datetime(2026, 3, 29, 4, 0, tzinfo=CEST)], id="dst-gap-never-twice"),
        # Fall back in Berlin on 2026-10-25: 03:00 CEST goes back to 02:00 CET.
        pytest.param("0 30 2 * * ?", datetime(2026, 10, 24, 12, tzinfo=CEST), BERLIN,
                     [datetime(2026, 10, 25, 2, 30, tzinfo=CEST),
                      datetime(2026, 10, 26, 2, 30, tzinfo=CET),
                      datetime(2026, 10, 27, 2, 30, tzinfo=CET)], id="dst-overlap-once"),
        pytest.param("0 30 2 * * ?", datetime(2026, 10, 25, 0, 45, tzinfo=UTC), BERLIN,
                     [datetime(2026, 10, 26, 2, 30, tzinfo=CET)], id="dst-overlap-no-repeat"),
    ],
)
def test_next_fire_times(expr: str, after: datetime, zone: ZoneInfo,
                         expected: list[datetime]) -> None:
    got = parse(expr).next_fire_times(after, zone, len(expected))
    assert all(t.tzinfo is zone for t in got)
    # Compared as (UTC instant, offset): an ambiguous wall time never compares equal across
    # tzinfos (PEP 495), and the offset pins the wall clock a user would see.
    assert [(t.astimezone(UTC), t.utcoffset()) for t in got] == [
        (t.astimezone(UTC), t.utcoffset()) for t in expected]


def test_next_fire_times_can_run_out() -> None:
    assert parse("0 0 12 1 1 ? 2027,2029").next_fire_times(sh(2026, 5, 1), SHANGHAI, 5) == [
        sh(2027, 1, 1, 12), sh(2029, 1, 1, 12)]
    assert parse("0 59 23 31 12 ?").next_fire_times(sh(2099, 12, 31, 23, 58), SHANGHAI) == [
        sh(2099, 12, 31, 23, 59)]
    assert parse("0 0 0 * * ?").next_fire_times(sh(2100, 1, 1), SHANGHAI) == []


def test_never_firing_expression_terminates_quickly() -> None:
    start = time.perf_counter()
    assert parse("0 0 0 30 2 ?").next_fire_times(sh(2026, 1, 1), SHANGHAI, 3) == []
    assert time.perf_counter() - start < 0.5


def test_next_fire_times_requires_aware_after() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse("0 0 2 * * ?").next_fire_times(datetime(2026, 1, 1), SHANGHAI)


def test_next_fire_times_zero_count() -> None:
    assert parse("0 0 2 * * ?").next_fire_times(sh(2026, 1, 1), SHANGHAI, 0) == []


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("0 0 0 30 2 ?", "there is no day 30 in February"),
        ("0 0 0 30,31 2 ?", "there is no day 30 or 31 in February"),
        ("0 0 0 31 4,6,9,11 ?", "there is no day 31 in April, June, September or November"),
        ("0 0 0 29 2 ? 2027", "there is no day 29 in February of 2027"),
        ("0 0 0 31W 2 ?", "there is no day 31 in February"),
        ("0 0 0 L-30 2,4 ?", "there is no last day minus 30 in February or April"),
        ("0 0 0 ? 2 2#5 2027", "there is no fifth Monday in February of 2027"),
        ("0 0 0 29 2 ?", None),
        ("0 0 0 29 2 ? 2027,2028", None),
        ("0 0 0 31 * ?", None),
        ("0 0 0 L-30 * ?", None),
        ("0 0 0 ? 2 2#5", None),
        ("0 0 0 ? * 6#5", None),
        ("0 0 2 * * ?", None),
        ("0 0 2 * * ? 1999", None),  # years in the past are not judged: there is no clock
    ],
)
def test_never_fires_reason(expr: str, reason: str | None) -> None:
    assert parse(expr).never_fires_reason() == reason


# Property tests ---------------------------------------------------------------------------------

_CRONISH_WORD = st.lists(st.sampled_from(
    [*"0123456789*?/,-#LW", *cron.MONTH_NAMES, *cron.DAY_NAMES, "jan", "fri", "lw"]),
    min_size=1, max_size=5).map("".join)
_BLANKS = st.sampled_from([" ", "  ", "\t", " \t "])
# Whole words of the alphabet, so a fair share has the right number of fields and gets deep.
CRONISH = st.one_of(
    st.lists(st.sampled_from([*"0123456789*?/,-#LW \t", *cron.MONTH_NAMES, *cron.DAY_NAMES]),
             max_size=30).map("".join),
    st.builds(lambda blanks, words: "".join(b + w for b, w in zip(blanks, words, strict=False)),
              st.lists(_BLANKS, min_size=8, max_size=8),
              st.lists(st.one_of(st.sampled_from(["*", "?", "1", "2"]), _CRONISH_WORD),
                       min_size=5, max_size=7).map(lambda words: ["0", *words])),
)

_NUMBER = st.one_of(st.integers(1, 12), st.integers(0, 60)).map(str)
_ITEM = st.one_of(
    st.just("*"), _NUMBER,
    st.tuples(_NUMBER, _NUMBER).map("-".join),
    st.tuples(st.sampled_from(["*", "0", "1", "5"]), st.integers(1, 13)).map(
        lambda t: f"{t[0]}/{t[1]}"),
)
_LIST = st.lists(_ITEM, min_size=1, max_size=3).map(",".join)
_DOM_FIELD = st.one_of(_LIST, st.sampled_from(["L", "L-3", "L-30", "15W", "1W", "31W", "LW"]))
_DOW_FIELD = st.one_of(st.lists(st.one_of(_ITEM, st.sampled_from(cron.DAY_NAMES)),
                                min_size=1, max_size=3).map(",".join),
                       st.sampled_from(["L", "6L", "FRIL", "6#3", "2#5", "MON-FRI"]))
_DAYS = st.one_of(st.tuples(_DOM_FIELD, st.just("?")), st.tuples(st.just("?"), _DOW_FIELD))
_YEAR_FIELD = st.sampled_from(["", " *", " 2027", " 2026-2030", " 2026/3", " 2099", " 2020"])
STRUCTURED = st.builds(
    lambda m, h, d, mon, y: f"0 {m} {h} {d[0]} {mon} {d[1]}{y}",
    _LIST, _LIST, _DAYS, st.one_of(_LIST, st.sampled_from(["JAN-MAR", "FEB", "JUL,DEC"])),
    _YEAR_FIELD)
ZONES = st.sampled_from([ZoneInfo("UTC"), SHANGHAI, BERLIN, ZoneInfo("America/New_York"),
                         ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Pacific/Apia")])


def _check_fire_times(parsed: cron.Cron, after: datetime, zone: ZoneInfo, count: int) -> None:
    times = parsed.next_fire_times(after, zone, count)
    assert len(times) <= count
    assert all(t.tzinfo is zone and t.utcoffset() is not None for t in times)
    utc = [t.astimezone(UTC) for t in times]
    assert all(t > after.astimezone(UTC) for t in utc)
    assert all(a < b for a, b in itertools.pairwise(utc))
    if parsed.never_fires_reason() is not None:
        assert times == []


def _check_round_trip(expr: str) -> None:
    try:
        parsed = parse(expr)
    except CronError as exc:
        error = exc
    else:
        assert parse(normalise(expr)).expression == normalise(expr)
        assert parsed.describe()
        _check_fire_times(parsed, datetime(2026, 3, 28, 12, tzinfo=UTC), BERLIN, 3)
        return
    assert 0 <= error.position <= len(expr)


@given(st.text())
def test_parse_arbitrary_text_only_raises_cron_error(expr: str) -> None:
    _check_round_trip(expr)


@given(CRONISH)
def test_parse_cronish_text_only_raises_cron_error(expr: str) -> None:
    _check_round_trip(expr)


@settings(max_examples=300)
@given(STRUCTURED, st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
                                timezones=ZONES), ZONES, st.integers(1, 5))
def test_next_fire_times_are_increasing_and_aware(expr: str, after: datetime, zone: ZoneInfo,
                                                  count: int) -> None:
    _check_round_trip(expr)
    try:
        parsed = parse(expr)
    except CronError:
        return
    _check_fire_times(parsed, after, zone, count)
