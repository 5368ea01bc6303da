"""Exports for spreadsheets and paper: CSV of requests, offers, members; the contact sheet."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from podlink.cli.export import phone_tree
from tests.cli.conftest import Network, make_pod


def test_csv_of_requests_offers_and_members(tmp_path: Path, network: Network) -> None:
    pod = make_pod(tmp_path, "Exporters")
    assert "podlink serve" in pod("export", "csv", "requests", code=1).stderr
    lonely = network.lonely
    lonely("member", "add", "Dana, \"the baker\"", "--contact", "555 0150", "--can", "food")
    rid = lonely.json("request", "add", "Flour, 5 kg", "--category", "food",
                      "--for", 'Dana, "the baker"')["id"]  # fmt: skip
    lonely("offer", "add", "Bread on Saturdays", "--category", "food")

    rows = list(csv.DictReader(io.StringIO(lonely("export", "csv", "requests").stdout)))
    mine = next(r for r in rows if r["id"] == rid)
    assert mine["title"] == "Flour, 5 kg" and mine["for_name"] == 'Dana, "the baker"'
    assert mine["opened"].startswith("20") and mine["status"] == "open"
    offers = list(csv.DictReader(io.StringIO(lonely("export", "csv", "offers").stdout)))
    assert "Bread on Saturdays" in {o["title"] for o in offers}

    out = tmp_path / "members.csv"
    result = lonely("export", "csv", "members", "-o", str(out))
    assert "personal details" in result.stderr and out.stat().st_mode & 0o077 == 0
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid,")  # the BOM Excel needs, then the header
    members = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    dana = next(m for m in members if m["contact"] == "555 0150")
    assert dana["name"] == 'Dana, "the baker"' and dana["can"] == "food"
    assert lonely("export", "csv", "pets", code=2).exit_code == 2


def test_contact_sheet_is_printable_html(tmp_path: Path, network: Network) -> None:
    lonely = network.lonely
    lonely("member", "add", "Rosa", "--contact", "555 0160", "--co-organizer")
    lonely("member", "add", "<script>Eve</script>", "--contact", "door 3")
    sheet = tmp_path / "sheet.html"
    lonely("export", "sheet", "-o", str(sheet))
    text = sheet.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "Phone tree" in text
    assert "<b>Rosa</b> — 555 0160" in text and "&lt;script&gt;Eve" in text
    assert "<script>" not in text and "@media print" in text
    assert "Lonely" in lonely("export", "sheet").stdout


def test_phone_tree_splits_participants_between_callers() -> None:
    people = [{"name": n, "role": r} for n, r in [
        ("A", "co-organizer"), ("b", "participant"), ("C", "co-organizer"),
        ("d", "participant"), ("e", "participant")]]  # fmt: skip
    tree = phone_tree(people)
    assert [(c and c["name"], [m["name"] for m in ms]) for c, ms in tree] == [
        ("A", ["b", "e"]), ("C", ["d"])]
    assert phone_tree(people[1:2]) == [(None, people[1:2])]
