"""Time: the ISO-8601 UTC strings every time in hpcjob takes, and the clock that waiting and
following loops are given (so a test drives them on a fake clock instead of sleeping)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


def utc_now() -> str:
    """Now as ISO-8601 UTC, the form every time in hpcjob takes."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso_utc(value: datetime | None) -> str | None:
    """A datetime (aware, or the machine's local time) as ISO-8601 UTC."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock(Protocol):
    """What a loop that waits needs of time: a monotonic reading, a sleep, the wall clock."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def now(self) -> datetime:
        """The wall clock, timezone-aware UTC."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


SYSTEM_CLOCK: Clock = SystemClock()
