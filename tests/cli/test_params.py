"""Dates as organizers say them (DOMAIN.md: "within 1-2 days", "this week")."""

from __future__ import annotations

import datetime as dt

import click
import pytest

from podlink.cli.params import NeededBy


def needed_by(text: str) -> dt.date:
    return dt.date.fromisoformat(NeededBy().convert(text, None, None))


@pytest.mark.parametrize(("text", "days"), [
    ("today", 0), ("tomorrow", 1), ("within 2 days", 2), ("in 1 day", 1), ("3 days", 3),
    ("  Within   2   DAYS ", 2), ("within 1-2 days", 2), ("within 1\u20132 days", 2),
])  # fmt: skip
def test_days_from_today(text: str, days: int) -> None:
    before = dt.date.today()
    got = needed_by(text)
    assert got - dt.timedelta(days=days) in (before, dt.date.today())  # midnight between


def test_this_week_and_next_week_end_on_a_sunday() -> None:
    today = dt.date.today()
    this, following = needed_by("this week"), needed_by("next week")
    assert this.weekday() == following.weekday() == 6
    assert 0 <= (this - today).days <= 6 and (following - this).days == 7
    assert needed_by("friday").weekday() == 4 and needed_by("friday") > today
    assert needed_by("2031-02-03") == dt.date(2031, 2, 3)


@pytest.mark.parametrize("text", ["someday", "in days", "1000 days", "2031-02-30", ""])
def test_other_words_are_refused_with_the_forms_that_work(text: str) -> None:
    with pytest.raises(click.BadParameter) as refused:
        NeededBy().convert(text, None, None)
    assert "'within 2 days', 'this week'" in str(refused.value)
