"""Local-time arithmetic for flows: "next day at 10:00" and quiet hours in a contact's timezone.

Pure functions of their arguments (deterministic, so workflows may call them); passed through the
workflow sandbox, whose proxied `ZoneInfo` the datetime module refuses. Differences are taken in
UTC, so a daylight-saving change in between is counted right.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def parse_clock(value: str) -> time:
    """ "HH:MM" as a time of day; ValueError naming the value otherwise."""
    try:
        hour, minute = value.strip().split(":")
        return time(int(hour), int(minute))
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day HH:MM (e.g. 08:00)") from None


def parse_quiet_hours(value: str | None) -> tuple[time, time] | None:
    """ "21:00-08:00" as (start, end); None for "" (no quiet hours). The window may wrap."""
    if not value or not value.strip():
        return None
    parts = value.split("-")
    if len(parts) != 2:
        raise ValueError(f"{value!r} is not a window HH:MM-HH:MM (e.g. 21:00-08:00)")
    start, end = parse_clock(parts[0]), parse_clock(parts[1])
    if start == end:
        raise ValueError(f"{value!r} starts and ends at the same time")
    return start, end


def zone(key: str | None) -> ZoneInfo:
    return ZoneInfo(key or "UTC")


def next_at(
    now: datetime, timezone: str | None, clock: time, *, days: int = 0, weekday: str | None = None
) -> datetime:
    """The moment (UTC) it is `clock` in `timezone`: `days` days from today, or on the next
    `weekday`; with neither, the next time the clock reads `clock`."""
    tz = zone(timezone)
    local = now.astimezone(tz)
    day: date = local.date() + timedelta(days=days)
    if weekday is not None:
        if weekday.lower() not in WEEKDAYS:
            raise ValueError(f"weekday must be one of {', '.join(WEEKDAYS)}, not {weekday!r}")
        day += timedelta(days=(WEEKDAYS.index(weekday.lower()) - day.weekday()) % 7)
    target = datetime.combine(day, clock, tzinfo=tz)
    if target <= now and days == 0:
        target = datetime.combine(
            day + timedelta(days=7 if weekday is not None else 1), clock, tzinfo=tz
        )
    return target.astimezone(UTC)


def quiet_hold(now: datetime, timezone: str | None, window: tuple[time, time] | None) -> timedelta:
    """How long a send due at `now` waits for the quiet `window` (start, end; it may wrap past
    midnight) to end in `timezone`; zero outside it."""
    if window is None:
        return timedelta(0)
    start, end = window
    tz = zone(timezone)
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    inside = start <= clock < end if start < end else clock >= start or clock < end
    if not inside:
        return timedelta(0)
    until = datetime.combine(local.date(), end, tzinfo=tz)
    if until <= local:
        until = datetime.combine(local.date() + timedelta(days=1), end, tzinfo=tz)
    return until.astimezone(UTC) - now.astimezone(UTC)
