"""How the CLI shows things: rich tables that fit 80 columns, short ids, relative times,
JSON, progress on stderr, and the warning about personal details leaving the pod.

Colour and progress only appear on a terminal (rich decides; NO_COLOR is honoured), so
piped output stays plain text.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from podlink.protocol.clock import wall_ms
from podlink.protocol.text import SHORT_LEN

LANE_WORDS = {"pod": "this pod only", "peers": "peered pods", "network": "the network"}


def out() -> Console:
    """The console for results (stdout), looked up per call so CliRunner can capture it."""
    return Console(highlight=False, soft_wrap=False)


def emit(renderable: Any) -> None:
    """Print a table or block; piped output loses rich's trailing padding."""
    console = out()
    if isinstance(renderable, Listing):
        _fit(renderable, console)
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def err() -> Console:
    """The console for warnings and progress (stderr)."""
    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Only JSON on stdout: full ids, UTF-8 text."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def say(text: str, indent: int = 3) -> None:
    """A paragraph, wrapped to the terminal with a hanging indent."""
    emit(Padding(Text(safe(text, lines=True)), (0, 0, 0, indent), expand=False))


def warn(message: str) -> None:
    echo(f"warning: {message}", err=True)


def echo(message: str = "", **options: Any) -> None:
    """click.echo for text that may quote other pods' words (names, titles, notes): no
    control character reaches the terminal (see ``safe``). Not for data written to
    standard output on purpose (an export), which goes out as it is."""
    click.echo(safe(str(message), lines=True), **options)


def short(id_: str | None) -> str:
    return (id_ or "")[:SHORT_LEN]


# ---------------------------------------------------------------- times


def ago_ms(ms: int | None, now_ms: int | None = None) -> str:
    """'just now', '5 min ago', '2 h ago', '3 days ago', or a date; 'in 5 min' ahead."""
    if not ms:
        return "never"
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    delta = (now_ms - ms) / 1000
    ahead, delta = delta < 0, abs(delta)  # (under 45 s either way is "just now" below)
    if delta < 45:
        return "just now"
    if delta < 90 * 60:
        text = f"{max(1, round(delta / 60))} min"
    elif delta < 36 * 3600:
        text = f"{round(delta / 3600)} h"
    elif delta < 14 * 86400:
        text = f"{round(delta / 86400)} days"
    else:
        return datetime.fromtimestamp(ms / 1000).strftime("%d %b %Y")
    return f"in {text}" if ahead else f"{text} ago"


def ago_ts(ts: int | None) -> str:
    """Relative time of an event timestamp (a hybrid logical clock: wall ms = ts >> 16)."""
    return ago_ms(wall_ms(ts)) if ts else "never"


def ago_s(seconds: int | None) -> str:
    return ago_ms(seconds * 1000) if seconds else "never"


def iso_ts(ts: int | None) -> str:
    """Local ISO time of an event timestamp, for exports."""
    if not ts:
        return ""
    return datetime.fromtimestamp(wall_ms(ts) / 1000).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------- tables

# Characters a terminal acts on rather than shows: C0 controls (ESC starts sequences that
# hide text or write the clipboard; a newline forges a row), DEL, C1 controls, and the
# bidi overrides that reorder what follows. Other pods' titles and names are shown here.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character shown as U+FFFD (``lines``: newlines kept,
    for a multi-line value in its own column)."""
    return (_CONTROLS_BUT_NEWLINE if lines else _CONTROLS).sub("\ufffd", text)


class Listing(Table):
    """A table that knows which column to shorten first when rows are too wide.

    Its cells are shown as given: text is never read as rich markup. (A need titled
    "Fix door [/b] please" made every later `request list`, on every pod it reached,
    end in a MarkupError; "Ann [nights]" showed as "Ann".)"""

    flexible: list[int]  # the columns that may be shortened, the first one first

    def add_row(self, *cells: Any, **options: Any) -> None:
        super().add_row(*(Text(safe(c)) if isinstance(c, str) else c for c in cells), **options)


def table(*columns: str, title: str | None = None) -> Listing:
    """A compact table; a column named with a leading '>' is right-aligned, one with a
    leading '~' may be shortened (with an ellipsis) when rows are too wide: the first such
    column first, then the widest of the others. Ids, states and times are never marked."""
    t = Listing(box=box.SIMPLE_HEAD, title=None if title is None else Text(title),
                title_justify="left", pad_edge=False,
                show_edge=False, padding=0)  # fmt: skip
    t.flexible = []
    for i, name in enumerate(columns):
        if name.startswith("~"):
            t.flexible.append(i)
        t.add_column(name.lstrip(">~"), justify="right" if name.startswith(">") else "left",
                     no_wrap=True, overflow="ellipsis")  # fmt: skip
    return t


FIRST_FLOOR, OTHER_FLOOR = 10, 6  # narrowest a shortened column gets, ellipsis included


def _fit(t: Listing, console: Console) -> None:
    """Shorten the flexible columns, so ids, states and times stay whole: the first one
    down to FIRST_FLOOR, then the widest of the others, in turn, down to OTHER_FLOOR.
    (Past that, rich squeezes every column: a terminal too narrow for any table.)"""
    if not getattr(t, "flexible", None):
        return
    wide = console.options.update_width(10_000)
    excess = Measurement.get(console, wide, t).maximum - console.width
    if excess <= 0:
        return
    width = {
        i: max(Measurement.get(console, wide, c).maximum
               for c in [t.columns[i].header, *t.columns[i].cells])
        for i in t.flexible
    }  # fmt: skip
    first, *others = t.flexible
    cut = min(excess, max(0, width[first] - FIRST_FLOOR))
    width[first] -= cut
    excess -= cut
    while excess > 0:
        room = [i for i in others if width[i] > OTHER_FLOOR]
        if not room:
            break
        widest = max(room, key=lambda i: width[i])
        runner_up = max((width[i] for i in room if i != widest), default=OTHER_FLOOR)
        cut = min(excess, width[widest] - max(runner_up, OTHER_FLOOR) or 1)
        width[widest] -= cut
        excess -= cut
    for i in t.flexible:
        t.columns[i].max_width = width[i]


def show(t: Table, empty: str | None = None) -> None:
    if empty is not None and not t.row_count:
        click.echo(empty)
        return
    emit(t)


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """A two-column 'label  value' block (for one record), skipping empty values."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for label, value in pairs:
        if value not in (None, "", []):
            t.add_row(label, Text(safe(str(value), lines=True)))  # never read as markup
    emit(t)


def joined(values: Sequence[str] | None) -> str:
    return ", ".join(values or [])


# ---------------------------------------------------------------- progress


@contextlib.contextmanager
def working(label: str, total: int | None = None) -> Iterator[Progress]:
    """A progress bar (or a spinner with no total) on stderr, shown only on a terminal."""
    console = err()
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )  # fmt: skip
    with progress:
        progress.add_task(label, total=total)
        yield progress


# ---------------------------------------------------------------- personal details

_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\d(?:[ ().-]{0,2}\d){6,14}(?!\w)")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ADDRESS = re.compile(
    r"\b\d{1,5}[a-z]?,?\s+(?:[a-z'-]+\s+){0,3}(?:street|st|avenue|ave|road|rd|lane|ln|drive|"
    r"dr|boulevard|blvd|court|ct|way|place|pl|terrace|close|crescent|square|sq|gardens|row)\b",
    re.IGNORECASE,
)


def personal_details(text: str) -> list[str]:
    """What in ``text`` looks like a phone number, an e-mail or a street address."""
    found = []
    if any(not _DATE.match(m.group().strip()) for m in _PHONE.finditer(text)):
        found.append("a phone number")
    if _EMAIL.search(text):
        found.append("an e-mail address")
    if _ADDRESS.search(text):
        found.append("a street address")
    return found


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def warn_if_personal(what: str, share: str, *texts: str) -> None:
    """Warn (never refuse) when text shared beyond the pod looks like personal details."""
    if share == "pod":
        return
    found = personal_details("\n".join(t for t in texts if t))
    if found:
        warn(
            f"this {what} is shared with {LANE_WORDS[share]} and looks like it holds "
            f"{_and(found)}; personal details belong in `podlink member add`, "
            "which keeps them in the pod (stored anyway)"
        )
