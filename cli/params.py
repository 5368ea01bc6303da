"""Option types the CLI checks before anything is signed: categories, dates, lanes."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from typing import Any

import click

from podlink.protocol.kinds import CATEGORIES, CONTACT_METHODS, URGENCIES

CATEGORY_WORD = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Category(click.ParamType):
    """One of the common categories, or any new lowercase word (letters, digits, dashes)."""

    name = "category"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if CATEGORY_WORD.match(text):
            if text not in CATEGORIES:
                close = difflib.get_close_matches(text, CATEGORIES, n=1, cutoff=0.8)
                if close:
                    click.echo(f"warning: {text!r} is a new category; did you mean "
                               f"{close[0]!r}?", err=True)  # fmt: skip
            return text
        hint = f"; did you mean {text.lower()!r}?" if CATEGORY_WORD.match(text.lower()) else ""
        self.fail(
            f"{text!r} is not a category: use one of {', '.join(CATEGORIES)}, or a new "
            f"lowercase word of letters, digits and dashes{hint}",
            param, ctx,
        )  # fmt: skip


class NeededBy(click.ParamType):
    """A date, in the time frames people say (DOMAIN.md: "within 1-2 days", "this
    week"): YYYY-MM-DD, today, tomorrow, a weekday (the next one), "in N days" or
    "within N days" (or "within 1-2 days": by the later), "this week" (by Sunday), "next
    week" (by the Sunday after)."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = " ".join(str(value).strip().lower().split())
        today = dt.date.today()
        days: int | None = None
        if text == "today":
            days = 0
        elif text == "tomorrow":
            days = 1
        elif text in WEEKDAYS:
            days = (WEEKDAYS.index(text) - today.weekday()) % 7 or 7
        elif text in ("this week", "next week"):
            days = 6 - today.weekday() + (7 if text == "next week" else 0)  # to Sunday
        elif found := IN_DAYS.fullmatch(text):
            days = int(found.group(1))  # "within 1-2 days": by the later one
        if days is not None:
            return (today + dt.timedelta(days=days)).isoformat()
        try:
            return dt.date.fromisoformat(text).isoformat()
        except ValueError:
            self.fail(f"{value!r} is not a date: use YYYY-MM-DD, today, tomorrow, a weekday, "
                      "'within 2 days', 'this week' or 'next week'", param, ctx)  # fmt: skip


IN_DAYS = re.compile(r"(?:in |within )?(?:\d{1,3} ?[-\u2013] ?)?(\d{1,3}) days?")


CATEGORY = Category()
SHARE = click.Choice(["pod", "peers", "network"])
URGENCY = click.Choice(list(URGENCIES))
PREFERS = click.Choice(list(CONTACT_METHODS))


def share_option(what: str) -> Any:
    return click.option(
        "--share", type=SHARE, default="pod", show_default=True,
        help=f"Who sees this {what}: pod (this pod only), peers (pods you peer with), "
        "network (every linked pod). Nothing leaves the pod unless you say so.",
    )  # fmt: skip


def changes_given(
    values: dict[str, Any], clear: tuple[str, ...] | None, examples: str
) -> dict[str, Any]:
    """The fields an update command was given (options not left out), text stripped; a
    usage error for a field both given and cleared, or for nothing to change at all."""
    changes = {k: v.strip() if isinstance(v, str) else v for k, v in values.items()
               if v is not None}  # fmt: skip
    both = sorted(set(clear or ()) & set(changes))
    if both:
        raise click.UsageError(f"--clear {both[0]} and a new value for it: give one of them")
    if not changes and not clear:
        also = "" if clear is None else " or --clear FIELD"  # None: the command has no --clear
        raise click.UsageError(f"nothing to change: give a new value ({examples}){also}")
    return changes
