"""bench/compare_matrix.py: its tables read every figure they show from real compare rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.results.compare import compare_json
from tests.unit.test_verdict import report_of, row, steady

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import compare_matrix as cm  # bench/ is not a package: its scripts import each other by name


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    good = report_of(steady(), batch=1)
    dropped = report_of([*steady(), row(9.0, status=502)], strategy="rolling", batch=3)
    return compare_json([good, dropped])["rows"]


def test_every_column_comes_from_the_compare_row(rows: list[dict[str, Any]]) -> None:
    good, dropped = (dict(zip(cm.COLUMNS, cm.cells(r), strict=True)) for r in rows)
    # a measured run leaves no cell empty but "failed checks": a renamed field would show as "-"
    assert [k for k, v in good.items() if v == "-"] == ["failed checks"]
    assert (good["strategy"], good["verdict"]) == ("one-at-a-time", "PASS")
    assert (dropped["strategy"], dropped["verdict"], dropped["failed checks"]) == ("rolling:3", "FAIL", "dropped")
    assert cm.label({"strategy": "blue-green", "batch": 3}) == "blue-green"  # its "batch" is the whole fleet
    assert dropped["requests"] == str(rows[1]["requests"]) == str(rows[0]["requests"] + 1)
    assert dropped["dropped"] == "1" and good["dropped"] == "0"
    total, both = rows[0]["users_total"], rows[0]["users_saw_both"]
    assert good["users_saw_both (share)"] == f"{both} of {total} ({100 * both / total:.1f} %)"
    assert good["requests_exposed_share"].endswith(" %")


def test_document_names_each_command_and_what_was_left(rows: list[dict[str, Any]]) -> None:
    ok = cm.Combo("compatible", "memory", "p-compatible-memory", command="`sandbox compare --x`", exit_code=1,
                  rows=rows)
    broken = cm.Combo("breaking", "shared", "p-breaking-shared", command="`sandbox compare --y`", exit_code=2,
                      error="no JSON table on stdout", left=["container p-breaking-shared-1-lb"])
    text = cm.document(["# head", ""], [ok, broken], 1.5)
    assert "## v2 compatible, sessions memory\n\n`sandbox compare --x`" in text
    assert "| one-at-a-time | PASS | - |" in text and "| rolling:3 | FAIL | dropped |" in text
    assert "Exit code 1" in text and "Left after `down`: nothing." in text
    assert "No table: the command exited 2" in text and "Left after `down`: container p-breaking-shared-1-lb." in text
    side = text[text.index("## users_saw_both / sessions_lost"):]
    first = rows[0]
    # per strategy, one cell per combination; the one that gave no table shows "-"
    assert f"| one-at-a-time | {first['users_saw_both']} / {first['sessions_lost']} | - |" in side
    assert text.endswith("The whole run took 1.5 minutes.\n")


def test_a_bad_prefix_is_refused_before_docker_is_touched(capsys: pytest.CaptureFixture[str]) -> None:
    assert cm.main(["--prefix", "bad_name"]) == 2
    assert capsys.readouterr().err.startswith("prefix: 'bad_name' must be")
