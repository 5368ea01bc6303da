"""Exports for the analog side: CSV for spreadsheets, and a printable contact sheet with a
phone tree, for when the internet (or the laptop) is down."""

from __future__ import annotations

import csv
import html
import io
import os
import re
import time
from pathlib import Path
from typing import Any

import click

from podlink.cli.output import iso_ts, warn, working
from podlink.cli.session import OrderedGroup, PodSession, Target, pod_options
from podlink.ledger.store import private_file
from podlink.protocol.text import b64d

Row = dict[str, Any]
URGENCY = ("urgent", "high", "normal", "low")  # most pressing first

COLUMNS = {
    "requests": ["id", "pod", "pod_name", "title", "category", "urgency", "status", "share",
                 "needed_by", "area", "details", "for_member", "for_name", "opened", "closed"],
    "offers": ["id", "pod", "pod_name", "title", "category", "status", "share", "by_member",
               "by_name", "availability", "details", "opened", "closed"],
    "members": ["id", "name", "contact", "prefers", "can", "needs", "role", "languages",
                "notes", "joined"],
}  # fmt: skip


@click.group(cls=OrderedGroup)
def export() -> None:
    """Export the pod's records: CSV for spreadsheets, a printable contact sheet."""


def _write(text: str, file: Path | None, what: str, home: Path) -> None:
    if file is None:
        click.echo(text, nl=False)
        return
    # An export written over the pod's own files (say -o ledger.db, or a symbolic or hard
    # link to it, or another case of its name on a case-insensitive disk) would destroy
    # the pod: compared as files (device and inode), not as names.
    if file.exists() and any(
        p.is_file() and os.path.samefile(file, p) for p in home.glob("*")
    ):
        raise click.ClickException(f"{file} is one of the pod's own files; choose another name")
    try:
        # Every export names people (members; needs for a member; offers by one): the
        # file is the owner's only from its creation.
        private_file(file)
        with working(f"Writing {file.name}", total=len(text)) as progress:
            file.write_text(text, encoding="utf-8")
            progress.update(progress.task_ids[0], completed=len(text))
    except OSError as e:  # a folder that is a file, one we may not write, a full disk
        raise click.ClickException(f"cannot write {file}: {e.strerror or e}") from None
    click.echo(f"Wrote {what} to {file}.", err=True)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as written. Text starting like a formula (other pods'
    titles reach this pod's exports: hostile input, e.g. '=HYPERLINK(...)'; or an honest
    '+44 ...' phone number) gets a leading apostrophe, so it is read as text."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not ID.fullmatch(value):
        return "'" + value
    return value


# A full id or key: base64url of 32 bytes. One in 64 starts with '-'; left as it is, so it
# can be copied into a command (it holds no parenthesis, quote or colon: no formula can do
# more with it than show #NAME?).
ID = re.compile("[A-Za-z0-9_-]{43}")


def _raw(id_text: str) -> bytes:
    """An id as the node orders it (its bytes: base64url text sorts otherwise)."""
    return b64d(id_text)


async def _members(s: PodSession) -> list[Row]:
    """Every member, in joining order (as `member list` shows them; the node pages by id)."""
    return sorted(await s.get_all("/v1/members"), key=lambda m: (m["joined_ts"], _raw(m["id"])))


async def _rows(s: PodSession, what: str) -> list[Row]:
    members = await _members(s)
    if what == "members":
        return [
            {**m, "can": "; ".join(m.get("can", [])), "needs": "; ".join(m.get("needs", [])),
             "languages": "; ".join(m.get("languages", [])), "joined": iso_ts(m["joined_ts"])}
            for m in members
        ]  # fmt: skip
    names = {m["id"]: m["name"] for m in members}
    if what == "requests":
        every = _pressing_first(await s.get_all("/v1/requests"))  # every page, not 5,000
        return [
            {**r, "for_name": names.get(r["for_member"] or "", ""),
             "opened": iso_ts(r["opened_ts"]), "closed": iso_ts(r["closed_ts"])}
            for r in every
        ]  # fmt: skip
    return [
        {**o, "by_name": names.get(o["by_member"] or "", ""), "opened": iso_ts(o["opened_ts"]),
         "closed": iso_ts(o["closed_ts"])}
        for o in sorted(await s.get_all("/v1/offers", status="all"),  # every page, oldest first
                        key=lambda o: (o["opened_ts"], _raw(o["id"])))
    ]  # fmt: skip


def _pressing_first(needs: list[Row]) -> list[Row]:
    """As request list shows them (the node pages by store order): open and accepted
    first, then most urgent, then oldest."""
    return sorted(needs, key=lambda r: (
        r["status"] not in ("open", "accepted"),
        URGENCY.index(r["urgency"]) if r["urgency"] in URGENCY else 9,
        r["opened_ts"], _raw(r["id"]),  # the node breaks ties by the id's bytes
    ))  # fmt: skip


@export.command("csv")
@click.argument("what", type=click.Choice(list(COLUMNS)))
@click.option("-o", "--output", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: standard output).")  # fmt: skip
@pod_options
def export_csv(pod: Target, what: str, file: Path | None) -> None:
    """Export requests, offers or members as CSV (full ids, ISO times; a file in UTF-8
    with a byte order mark, so that Excel shows every name right).

    \b
    Examples:
      podlink export csv requests -o needs.csv
      podlink export csv members -o members.csv    # personal details: keep it safe
    """
    found = pod.call(lambda s: _rows(s, what))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS[what], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in r.items()} for r in found)
    if what == "members":
        warn("this export holds members' personal details; keep it as safe as the laptop")
    # A file starts with the UTF-8 byte order mark: without it Excel reads the file in
    # the machine's legacy code page and shows "JosÃ©" for José. LibreOffice and Google
    # Sheets skip it; standard output (piped into other programs) gets none.
    _write(("\ufeff" if file is not None else "") + buffer.getvalue(), file, what, pod.home)


@export.command("sheet")
@click.option("-o", "--output", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: standard output).")  # fmt: skip
@pod_options
def export_sheet(pod: Target, file: Path | None) -> None:
    """A printable HTML contact sheet: the phone tree, members, open needs, resources.

    Open it in a browser and print it; it works when the internet does not.

    \b
    Example:
      podlink export sheet -o maple-street.html
    """

    async def go(s: PodSession) -> dict[str, Any]:
        me = await s.get("/v1/status")
        return {
            "pod": me, "members": await _members(s),
            "requests": _pressing_first(
                await s.get_all("/v1/requests", status="open", pod=me["pod"])
            ),
            "resources": sorted(await s.get_all("/v1/resources"),
                                key=lambda r: (r["category"], r["name"], _raw(r["id"]))),
        }  # fmt: skip

    warn("the sheet holds members' personal details; keep printouts safe, shred old ones")
    _write(render_sheet(pod.call(go)), file, "sheet", pod.home)


def phone_tree(members: list[Row]) -> list[tuple[Row | None, list[Row]]]:
    """Co-organizers each call a share of the participants (round robin, in joining order);
    with no co-organizer, one branch: the organizer calls everyone."""
    callers = [m for m in members if m.get("role") == "co-organizer"]
    others = [m for m in members if m.get("role") != "co-organizer"]
    if not callers:
        return [(None, others)]
    branches: list[tuple[Row | None, list[Row]]] = [(c, []) for c in callers]
    for i, m in enumerate(others):
        branches[i % len(callers)][1].append(m)
    return branches


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _person(m: Row) -> str:
    how = f" ({_e(m['prefers'])})" if m.get("prefers") else ""
    return f"<b>{_e(m['name'])}</b> — {_e(m.get('contact') or 'no contact')}{how}"


def render_sheet(data: dict[str, Any]) -> str:
    """The contact sheet as one self-contained HTML page, styled for paper."""
    pod, members = data["pod"], data["members"]
    today = time.strftime("%d %B %Y")
    tree = []
    for caller, called in phone_tree(members):
        head = _person(caller) if caller else "<b>The organizer</b>"
        items = "".join(f"<li>{_person(m)}</li>" for m in called) or "<li>(nobody yet)</li>"
        tree.append(f"<li>{head} calls:<ol>{items}</ol></li>")
    member_rows = "".join(
        f"<tr><td>{_e(m['name'])}</td><td>{_e(m.get('contact'))}</td><td>{_e(m.get('prefers'))}"
        f"</td><td>{_e(', '.join(m.get('can', [])))}</td><td>{_e(', '.join(m.get('needs', [])))}"
        f"</td><td>{_e(m.get('notes'))}</td></tr>"
        for m in members
    )
    names = {m["id"]: m["name"] for m in members}
    need_rows = "".join(
        f"<tr><td>{_e(r['title'])}</td><td>{_e(r['category'])}</td><td>{_e(r['urgency'])}</td>"
        f"<td>{_e(names.get(r['for_member'] or '', ''))}</td><td>{_e(r['needed_by'])}</td></tr>"
        for r in data["requests"]
    )
    resource_rows = "".join(
        f"<tr><td>{_e(r['name'])}</td><td>{_e(r['category'])}</td><td>{_e(r['where'])}</td>"
        f"<td>{_e(r['when'])}</td><td>{_e(r['contact'])}</td></tr>"
        for r in data["resources"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(pod['name'])} — contact sheet</title>
<style>
body {{ font: 11pt/1.4 system-ui, sans-serif; margin: 2em; color: #000; }}
h1 {{ font-size: 18pt; margin: 0 }} h2 {{ font-size: 13pt; margin-top: 1.5em }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border: 1px solid #999; padding: 3px 6px; text-align: left; vertical-align: top }}
.private {{ border: 2px solid #000; padding: 4px 8px; font-weight: bold }}
@media print {{ body {{ margin: 0 }} h2 {{ break-after: avoid }} tr {{ break-inside: avoid }} }}
</style></head><body>
<h1>{_e(pod['name'])}</h1>
<p>{_e(pod['zone'])} · printed {today} · pod {_e(pod['pod'][:8])}</p>
<p class="private">Private: personal details of neighbours. Do not post or share; shred this
sheet when a new one is printed.</p>
<h2>Phone tree</h2>
<p>When something happens, call down your branch; if someone does not answer, knock.</p>
<ul>{''.join(tree)}</ul>
<h2>Members ({len(members)})</h2>
<table><tr><th>Name</th><th>Contact</th><th>Prefers</th><th>Can help with</th><th>Needs</th>
<th>Notes</th></tr>{member_rows}</table>
<h2>Open needs ({len(data['requests'])})</h2>
<table><tr><th>Need</th><th>Category</th><th>Urgency</th><th>For</th><th>Needed by</th></tr>
{need_rows}</table>
<h2>Resources</h2>
<table><tr><th>Name</th><th>Category</th><th>Where</th><th>When</th><th>Contact</th></tr>
{resource_rows}</table>
</body></html>
"""
