"""The suite's file order (tests/conftest.py): costliest files first, each file's tests kept together and in order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from scripts.suite_durations import file_seconds, source_file
from tests.conftest import E2E, UNKNOWN_E2E_S, costliest_first

ROOT = E2E.parents[1]


def item(rel: str, name: str) -> Any:
    return SimpleNamespace(path=ROOT / rel, name=name)


def test_costliest_files_first_and_each_file_kept_in_order() -> None:
    items = [item("tests/unit/test_a.py", "a1"), item("tests/unit/test_a.py", "a2"),
             item("tests/e2e/test_slow_e2e.py", "s1"), item("tests/e2e/test_new_e2e.py", "n1"),
             item("tests/e2e/test_slow_e2e.py", "s2"), item("tests/e2e/test_quick_e2e.py", "q1"),
             item("tests/unit/test_b.py", "b1")]
    costs = {"tests/e2e/test_slow_e2e.py": 200.0, "tests/e2e/test_quick_e2e.py": 10.0, "tests/unit/test_a.py": 2.0}
    order = [i.name for i in costliest_first(items, costs, ROOT)]
    # slow (200), the unknown e2e file (UNKNOWN_E2E_S), quick (10), unit a (2), unknown unit b (0)
    assert UNKNOWN_E2E_S > 10.0
    assert order == ["s1", "s2", "n1", "q1", "a1", "a2", "b1"]


def test_no_table_keeps_the_collection_order_within_each_kind() -> None:
    items = [item("tests/unit/test_a.py", "a1"), item("tests/e2e/test_x_e2e.py", "x1"),
             item("tests/e2e/test_y_e2e.py", "y1"), item("tests/unit/test_b.py", "b1")]
    assert [i.name for i in costliest_first(items, {}, ROOT)] == ["x1", "y1", "a1", "b1"]


def test_the_durations_script_sums_junit_cases_per_file(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.unit.test_suite_order" name="a" time="1.25"/>'
        '<testcase classname="tests.unit.test_suite_order" name="b" time="0.5"/>'
        '<testcase classname="tests.unit.test_cli.TestSomething" name="c" time="2"/>'
        '<testcase classname="not.a.file" name="d" time="9"/>'
        '</testsuite></testsuites>')
    assert source_file("tests.unit.test_cli.TestSomething") == "tests/unit/test_cli.py"
    assert file_seconds([junit]) == {"tests/unit/test_cli.py": 2.0, "tests/unit/test_suite_order.py": 1.8}
