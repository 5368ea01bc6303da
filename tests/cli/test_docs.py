"""Docs that tests keep true: the CLI reference, the README's commands, the config keys,
the tests the docs cite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from podlink.cli.reference import MARKER, commands, render
from podlink.node.config import SETTABLE

ROOT = Path(__file__).resolve().parents[2]
CLI_DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def test_every_command_is_in_the_cli_reference() -> None:
    missing = [path for path, _ in commands() if f"### `{path}`" not in CLI_DOC]
    assert not missing, f"docs/cli.md lacks {missing}"


def test_the_generated_reference_is_current() -> None:
    assert MARKER in CLI_DOC
    assert CLI_DOC.split(MARKER, 1)[1] == render().split(MARKER, 1)[1], (
        "docs/cli.md is stale: run `python -m podlink.cli.reference`"
    )


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert blocks[0] == (
        "python -m pip install . && podlink demo\n"
        "python -m pip install -e '.[test]' && python -m pytest -q\n"
    )
    for doc in ("cli.md", "operations.md", "protocol.md"):
        assert f"(docs/{doc}" in readme and (ROOT / "docs" / doc).exists()


def test_every_config_key_is_documented() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "PODLINK_<KEY>" in ops
    missing = [f.name for f in SETTABLE if f"| `{f.name}` |" not in ops]
    assert not missing, f"docs/operations.md lacks config keys {missing}"


def test_every_test_the_docs_cite_exists() -> None:
    """docs/ backs its claims with `tests/FILE.py::test_name`: each must name a test that
    is there (a renamed or deleted test would leave a claim with nothing behind it)."""
    cited = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for found in re.finditer(r"(tests/[\w/]+\.py)::(\w+)", doc.read_text(encoding="utf-8")):
            path, name = ROOT / found.group(1), found.group(2)
            assert path.is_file(), f"{doc.name} cites {found.group(0)}: no such file"
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {n.name for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}  # fmt: skip
            assert name in names, f"{doc.name} cites {found.group(0)}: no such test"
            cited += 1
    assert cited > 20  # the pattern still finds the citations
