"""The strategy registry: what each strategy answers, and that nothing else compares their names."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from sandbox.errors import PlanError, UsageError
from sandbox.rollout import strategies
from sandbox.rollout.plan import PlanSettings, merge_reloads, plan, simulate, validate
from sandbox.rollout.steps import Batch, Step
from sandbox.rollout.strategies import DEFAULT_STRATEGY, NAMES, REGISTRY, RolloutStrategy, Unregistered, of
from tests.unit.test_plan import fleet_of

SANDBOX = Path(strategies.__file__).resolve().parents[1]


def test_the_registry_lists_every_strategy_once_in_the_clis_order() -> None:
    assert NAMES == ("one-at-a-time", "rolling", "surge", "double-half", "blue-green", "naive", "canary")
    assert DEFAULT_STRATEGY == "one-at-a-time"
    assert all(REGISTRY[name].name == name and REGISTRY[name].help for name in NAMES)


# --------------------------------------------------------------------------- no name comparisons elsewhere


def name_comparisons(source: str) -> list[int]:
    """Lines of ``source`` that compare with a quoted strategy name or list such names together."""
    names = set(NAMES)

    def quoted(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(quoted(e) for e in node.elts)
        return False

    def compares(node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            return any(quoted(n) for n in (node.left, *node.comparators))
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return sum(quoted(e) for e in node.elts) >= 2
        return False

    return sorted(node.lineno for node in ast.walk(ast.parse(source)) if compares(node))


def test_the_detector_finds_each_kind_of_comparison() -> None:
    source = '\n'.join([
        'a = s == "naive"',
        'b = "rolling" if s != "naive" else s',
        'c = s in ("rolling", "surge")',
        'BATCHED = ("rolling", "surge", "naive")',
        'd = s in NAMES',
        'phase = "rolling"',
        'e = s == "pairs"',
    ])
    assert name_comparisons(source) == [1, 2, 3, 3, 4]


def test_no_strategy_name_is_compared_outside_the_registry() -> None:
    found = [f"{path.relative_to(SANDBOX.parent)}:{line}"
             for path in sorted(SANDBOX.rglob("*.py")) if path.name != "strategies.py"
             for line in name_comparisons(path.read_text())]
    assert found == []


# --------------------------------------------------------------------------- what each strategy answers


@pytest.mark.parametrize(("name", "effective", "reported"), [
    ("one-at-a-time", 1, 1),
    ("rolling", 3, 3),
    ("surge", 3, 3),
    ("naive", 3, 3),
    ("double-half", 9, 9),
    ("blue-green", 9, 9),
])
def test_the_batch_of_a_strategy(name: str, effective: int, reported: int) -> None:
    assert (of(name).effective_batch(3, 9), of(name).report_batch(3, 9)) == (effective, reported)


def test_a_batch_beyond_the_fleet_is_the_whole_fleet_but_reported_as_asked() -> None:
    assert (of("surge").effective_batch(12, 9), of("surge").report_batch(12, 9)) == (9, 12)


@pytest.mark.parametrize("name", NAMES)
def test_only_rolling_refuses_a_batch_of_the_whole_fleet(name: str) -> None:
    if name == "rolling":
        with pytest.raises(UsageError, match="batch: 9 must be smaller than the fleet"):
            of(name).check_batch(9, 9)
        of(name).check_batch(8, 9)
    else:
        of(name).check_batch(9, 9)


def test_which_strategies_are_batched_in_place_graceful_and_judged() -> None:
    def having(attribute: str) -> set[str]:
        return {name for name in NAMES if getattr(of(name), attribute)}

    assert having("batched") == {"rolling", "surge", "naive"}
    assert having("in_place") == {"one-at-a-time", "rolling", "naive"}
    assert having("graceful") == set(NAMES) - {"naive"}
    assert having("judged_in_compare") == set(NAMES) - {"naive"}


@pytest.mark.parametrize("name", NAMES)
def test_a_rollback_drains(name: str) -> None:
    back = of(of(name).rollback_strategy)
    assert back.graceful and back.name == {"naive": "rolling", "canary": "surge"}.get(name, name)


@pytest.mark.parametrize(("name", "batch", "label", "titled"), [
    ("rolling", 3, "rolling:3", True),
    ("rolling", 1, "rolling", True),
    ("surge", 1, "surge", True),
    ("naive", 2, "naive:2", True),
    ("naive", 1, "naive", False),
    ("one-at-a-time", 1, "one-at-a-time", False),
    ("double-half", 9, "double-half", True),
    ("swarm-native:start-first", 1, "swarm-native:start-first", False),
])
def test_labels_and_titles(name: str, batch: int, label: str, titled: bool) -> None:
    assert (of(name).label(batch), of(name).title_names_batch(batch)) == (label, titled)


def test_the_promise() -> None:
    assert of("rolling").promise(6, 9, 9) == "capacity never below 6 of 9, at most 9 containers"
    assert of("naive").promise(6, 9, 9) == "none: naive kills servers while they still get traffic"


def test_a_name_outside_the_registry_is_judged_and_never_planned() -> None:
    other = of(None)
    assert isinstance(other, Unregistered) and other.judged_in_compare and not other.in_place
    with pytest.raises(PlanError, match="not one of one-at-a-time"):
        other.limits(1, 3)
    with pytest.raises(PlanError, match="strategy"):
        plan(fleet_of(3), PlanSettings(3, "v2", "pairs"))


# --------------------------------------------------------------------------- adding one


class Pairs(RolloutStrategy):
    """The module docstring's example, verbatim but for its registration."""

    name = "pairs"
    help = "2 servers at a time, no extra capacity"
    in_place = True

    def effective_batch(self, batch: int, size: int) -> int:
        return min(2, size)

    def limits(self, batch: int, size: int) -> tuple[int, int]:
        return (self.effective_batch(batch, size), 0)

    def replace(self, batch: Batch, batch_no: int) -> list[Step]:
        return strategies._drain_first(batch, batch_no)


@pytest.mark.parametrize("mode", ["replace", "in-place"])
@pytest.mark.parametrize("n", range(1, 8))
def test_a_new_class_is_all_the_planner_needs(monkeypatch: pytest.MonkeyPatch, mode: str, n: int) -> None:
    monkeypatch.setitem(REGISTRY, "pairs", Pairs())
    settings = PlanSettings(n, "v2", "pairs", 5, mode)  # type: ignore[arg-type]
    steps = plan(fleet_of(n), settings)
    merged = merge_reloads(steps)
    validate(fleet_of(n), settings, merged)
    sim = simulate(fleet_of(n), settings, steps)
    shape = (math.ceil(n / 2), n, n - min(2, n), math.ceil(n / 2) - 1)  # its row in test_plan's SHAPES
    assert (sim.batches, sim.peak_containers, sim.min_serving, len(steps) - len(merged)) == shape
