"""Expand/contract and rollback safety, against the fakes: the toy's migration SQL (which version
works after which migrations), ``roll --contract`` in the rehearsal's order of things, the rollback
rehearsals' records and their verdict, and compare's migration columns."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandbox.fleet import sources
from sandbox.results.compare import compare_cells, compare_fields, compare_row
from sandbox.results.markdown import markdown_page
from sandbox.results.model import Report, RollbackRehearsal, Verdict, rollback_rehearsals
from sandbox.results.text import summary_text
from sandbox.results.verdict import rollback_safe
from sandbox.rollout import rollback_safety
from tests.unit.fakes import FakeRuntime
from tests.unit.test_rehearsal import World, settings


def _migrations() -> dict[str, list[str]]:
    spec = importlib.util.spec_from_file_location("toy_migrate", sources.folder("app_v2") / "migrate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: dict[str, list[str]] = module.MIGRATIONS
    return found


# -- the toy's SQL, on a small model of the orders table ------------------------------------------
class Undefined(Exception):
    """What PostgreSQL says for a column that is not there (42703)."""


@dataclass
class Table:
    """The orders table as the statements leave it: its columns, those NOT NULL without a default,
    and whether the sync trigger fills item_name and title from each other."""

    columns: set[str] = field(default_factory=set)
    required: set[str] = field(default_factory=set)
    trigger: bool = False

    def apply(self, sql: str) -> None:
        text = " ".join(sql.split())
        if text.startswith("CREATE TABLE IF NOT EXISTS orders"):
            if not self.columns:
                self.columns = {"id", "sid", "item", "item_name", "created"}
                self.required = {"sid", "item", "item_name"}
        elif m := re.search(r"ADD COLUMN IF NOT EXISTS (\w+) (.*)", text):
            self.columns.add(m[1])
            if "NOT NULL" in m[2] and "DEFAULT" not in m[2]:
                self.required.add(m[1])
        elif m := re.search(r"DROP COLUMN IF EXISTS (\w+)", text):
            self.columns.discard(m[1])
            self.required.discard(m[1])
        elif m := re.search(r"RENAME COLUMN (\w+) TO (\w+)", text):
            self._need(m[1])
            self.columns = {m[2] if c == m[1] else c for c in self.columns}
            self.required = {m[2] if c == m[1] else c for c in self.required}
        elif m := re.search(r"ALTER COLUMN (\w+) (SET|DROP) NOT NULL", text):
            self._need(m[1])
            (self.required.add if m[2] == "SET" else self.required.discard)(m[1])
        elif text.startswith("CREATE TRIGGER orders_sync_title"):
            self.trigger = True
        elif text.startswith("DROP TRIGGER"):
            self.trigger = False
        elif m := re.search(r"UPDATE orders SET (\w+) = (\w+)", text):
            self._need(m[1])
            self._need(m[2])

    def _need(self, column: str) -> None:
        if column not in self.columns:
            raise Undefined(column)

    def works_for(self, columns: Sequence[str]) -> bool:
        """A version that writes and reads ``columns`` (beside sid and item) works against it."""
        filled = set(columns) | {"sid", "item"}
        if self.trigger and filled & {"title", "item_name"}:
            filled |= {"title", "item_name"}
        return set(columns) <= self.columns and self.required <= filled


V1 = ("item_name",)
V2 = ("title", "currency")


@pytest.mark.parametrize(("steps", "v1_works", "v2_works"), [
    ((), True, False),  # v2 before any migration: its columns are not there
    (("expand",), True, True),  # the mixed window: both work, so a rollback does too
    (("expand", "contract"), False, True),  # contracted: only v2; a rollback to v1 breaks
    (("breaking",), False, True),  # one step: v1 breaks at once
    (("expand", "expand"), True, True),  # each is safe to run twice
    (("expand", "contract", "contract"), False, True),
])
def test_which_version_works_after_which_migrations(steps: tuple[str, ...], v1_works: bool, v2_works: bool) -> None:
    table, migrations = Table(), _migrations()
    table.apply(migrations["expand"][0])  # the first v1 server made the baseline
    for step in steps:
        for sql in migrations[step]:
            table.apply(sql)
    assert (table.works_for(V1), table.works_for(V2)) == (v1_works, v2_works), table


def test_contract_without_expand_fails_before_it_drops_anything() -> None:
    table, migrations = Table(), _migrations()
    table.apply(migrations["expand"][0])
    with pytest.raises(Undefined, match="title"):
        for sql in migrations["contract"]:
            table.apply(sql)
    assert "item_name" in table.columns  # its first statement failed: one transaction, nothing dropped


def test_expand_keeps_what_v1_uses_and_contract_removes_only_that() -> None:
    migrations = _migrations()
    expand, contract = " ".join(migrations["expand"]), " ".join(migrations["contract"])
    assert "DROP COLUMN" not in expand and "RENAME" not in expand
    assert "BEFORE INSERT OR UPDATE ON orders" in expand and "COALESCE(NEW.item_name, NEW.title)" in expand
    assert "DROP COLUMN IF EXISTS item_name" in contract and "DROP TRIGGER" in contract
    assert "RENAME COLUMN item_name TO title" in " ".join(migrations["breaking"])


# -- the rehearsal's record ------------------------------------------------------------------------
def test_a_rehearsal_is_read_from_the_last_json_line_its_container_printed() -> None:
    out = "server log\n" + json.dumps({"requests": 120, "errors": 7, "first_error": "GET /api/cart: 409 x"})
    got = rollback_safety.parse("contract", "v1", 0, out, 5.12345)
    assert got == RollbackRehearsal("contract", "v1", "ran", 120, 7, "GET /api/cart: 409 x", 5.123)
    assert (got.safe, got.answer) == (False, "no")
    assert got.line() == ("after the contract: v1 against the schema: 120 requests, 7 errors: rollback safe: no "
                          "(first: GET /api/cart: 409 x)")
    clean = rollback_safety.parse("rollout", "v1", 0, json.dumps({"requests": 80, "errors": 0, "first_error": None}), 1)
    assert (clean.safe, clean.answer, clean.first_error) == (True, "yes", None)
    assert RollbackRehearsal.from_json(got.to_json()) == got and got.to_json()["rollback_safe"] == "no"


@pytest.mark.parametrize(("code", "out", "reason"), [
    (3, '{"error": "the old version\'s server did not answer /healthz in 30 s"}', "did not answer /healthz"),
    (124, "", "exit 124: no output"),
    (1, "Traceback ...\nImportError: x", "exit 1: ImportError: x"),
])
def test_a_rehearsal_that_could_not_run_says_why_and_is_neither_safe_nor_unsafe(code: int, out: str,
                                                                             reason: str) -> None:
    got = rollback_safety.parse("rollout", "v1", code, out, 1.0)
    assert got.status == "failed" and got.reason and reason in got.reason
    assert (got.safe, got.answer) == (None, "unknown")
    assert rollback_safe(got, True).status == "NOT_RUN"


def test_the_rehearsals_container_runs_the_server_then_the_client_from_its_environment() -> None:
    cmd = rollback_safety.command(4.0)
    assert cmd.startswith("python3 -m appserver.supervisor >/tmp/server.log 2>&1 & ")
    assert f'exec python3 -c "${rollback_safety.CLIENT_ENV}" 4 {rollback_safety.USERS} ' in cmd
    compile(rollback_safety.CLIENT, "client", "exec")  # the client is valid Python


# -- the verdict -----------------------------------------------------------------------------------
SAFE = RollbackRehearsal("rollout", "v1", "ran", 100, 0)
UNSAFE = RollbackRehearsal("contract", "v1", "ran", 100, 40, "POST /api/cart: 409 schema mismatch")


@pytest.mark.parametrize(("rehearsal", "required", "status", "value"), [
    (SAFE, False, "PASS", 0),
    (SAFE, True, "PASS", 0),
    (UNSAFE, False, "SKIP", 40),  # shown, not judged: after a contract step it is unsafe by design
    (UNSAFE, True, "FAIL", 40),
    (RollbackRehearsal("rollout", "v1", "not_run", reason="your own app"), True, "NOT_RUN", None),
    (RollbackRehearsal("rollout", "v1", "ran", 0, 0), True, "NOT_RUN", None),  # no answer: no evidence
])
def test_rollback_safety_is_judged_only_when_required(rehearsal: RollbackRehearsal, required: bool, status: str,
                                                      value: int | None) -> None:
    check = rollback_safe(rehearsal, required)
    assert (check.name, check.status, check.value) == (f"rollback_safe_after_{rehearsal.after}", status, value)
    assert Verdict((check,)).passed is (status != "FAIL")
    if rehearsal is UNSAFE:
        assert check.reason and "first: POST /api/cart: 409 schema mismatch" in check.reason


# -- roll --contract with the fakes ----------------------------------------------------------------
class _Db(FakeRuntime):
    """run_once: migrations pass; a rehearsal answers with errors once the contract ran."""

    def __init__(self) -> None:
        super().__init__()
        self.contracted = False

    async def run_once(self, project: str, image: str, command: str, env: Mapping[str, str],
                       timeout_s: float, *, toy: bool = True) -> tuple[int, str]:
        await super().run_once(project, image, command, env, timeout_s, toy=toy)
        if rollback_safety.CLIENT_ENV in env:
            errors = 30 if self.contracted else 0
            return 0, json.dumps({"requests": 90, "errors": errors,
                                  "first_error": "GET /api/cart: 409 item_name" if errors else None})
        self.contracted = self.contracted or "contract" in command
        return 0, "done\n"


def _world() -> World:
    world = World()
    world.runtime = _Db()
    world.runtime.up(3, "v1")
    world.balancer.runtime = world.runtime
    world.balancer.attach_all()
    world.probe.runtime = world.runtime
    return world


@pytest.mark.asyncio
async def test_a_contract_runs_once_every_server_is_new_between_two_rollback_rehearsals() -> None:
    world = _world()
    result = await world.rehearse(settings(migrate="python3 -m migrate expand",
                                           contract="python3 -m migrate contract"))
    calls = [(image, cmd.split(" ")[0] if rollback_safety.CLIENT_ENV in env else cmd)
             for image, cmd, env in world.runtime.run_once_calls]
    assert calls == [("app:v2", "python3 -m migrate expand"), ("app:v1", "python3"),
                     ("app:v2", "python3 -m migrate contract"), ("app:v1", "python3")]
    last_start = max(i for i, e in enumerate(world.runtime.log) if e.startswith("start "))
    assert world.runtime.log.index("run_once p python3 -m migrate contract") > last_start
    env = world.runtime.run_once_calls[1][2]
    assert env["FLEET"] == "1" and "NEW" not in env  # the old version's environment, not --set-env
    report = result.report
    assert [(r["after"], r["rollback_safe"]) for r in report["rollback_rehearsals"]] == [
        ("rollout", "yes"), ("contract", "no")]
    checks = {c["name"]: c["status"] for c in report["verdict"]["checks"]}
    assert (checks["contract"], checks["rollback_safe_after_rollout"], checks["rollback_safe_after_contract"]) == (
        "PASS", "PASS", "SKIP")
    assert result.exit_code == 0 and report["contract"]["status"] == "passed"
    parsed = Report.from_json(report)
    assert [r.answer for r in rollback_rehearsals(parsed.extra)] == ["yes", "no"]
    text = summary_text(parsed)
    assert "  after the contract: v1 against the schema: 90 requests, 30 errors: rollback safe: no" in text
    assert "contract         after the last batch: PASS exit 0" in text and "mixed checks" not in text
    markdown = markdown_page(parsed)
    assert "## Contract step" in markdown
    assert "| contract | v1 | 90 | 30 | no | GET /api/cart: 409 item_name |" in markdown


@pytest.mark.asyncio
async def test_require_rollback_safe_fails_the_run_after_a_contract() -> None:
    world = _world()
    result = await world.rehearse(settings(migrate="python3 -m migrate expand", contract="python3 -m migrate contract",
                                           require_rollback_safe=True))
    assert result.exit_code == 1
    assert [c["name"] for c in result.report["verdict"]["checks"] if not c["pass"]] == ["rollback_safe_after_contract"]


@pytest.mark.asyncio
async def test_no_rehearsal_without_a_migration_or_with_zero_seconds() -> None:
    world = _world()
    result = await world.rehearse(settings())
    assert world.runtime.run_once_calls == [] and "rollback_rehearsals" not in result.report
    world = _world()
    result = await world.rehearse(settings(migrate="python3 -m migrate expand", rollback_rehearsal_s=0))
    assert [cmd for _, cmd, _ in world.runtime.run_once_calls] == ["python3 -m migrate expand"]


@pytest.mark.asyncio
async def test_the_dry_run_plan_names_the_contract_and_the_rehearsals() -> None:
    world = _world()
    from sandbox.rollout.rehearsal import Rehearsal
    from sandbox.ui.progress import Progress
    prepared = await Rehearsal(settings(migrate="m", contract="c"), runtime=world.runtime,
                               progress=Progress(world.stream), deps=world.deps, install_sigint=False).prepare()
    text = prepared.describe()
    assert "  contract step once every server is v2, in a one-off v2 container: c" in text
    assert "rollback rehearsal after the rollout and the contract step: v1 served against the schema for 4 s" in text
    assert prepared.as_json()["contract"] == "c" and world.runtime.run_once_calls == []


# -- compare --------------------------------------------------------------------------------------
def _report(strategy: str, after: dict[str, Any] | None, rehearsals: list[RollbackRehearsal]) -> Report:
    extra: dict[str, Any] = {}
    if after is not None:
        extra["migration"] = {"status": "passed", "by_version_after": after}
    if rehearsals:
        extra["rollback_rehearsals"] = [r.to_json() for r in rehearsals]
    base = Report.from_json({"strategy": strategy, "from_version": "v1", "to_version": "v2"})
    return Report(base.run, base.figures, base.verdict, extra)


def test_compare_shows_the_old_versions_errors_and_rollback_safety_per_strategy() -> None:
    rolling = _report("one-at-a-time", {"v1": {"answers": 80, "errors": 31}, "v2": {"answers": 90, "errors": 0}},
                      [RollbackRehearsal("rollout", "v1", "ran", 50, 20)])
    expand = _report("blue-green", {"v2": {"answers": 90, "errors": 0}}, [SAFE, UNSAFE])
    plain = _report("one-at-a-time", None, [])
    assert (compare_row(rolling)["old_version_errors"], compare_row(rolling)["rollback_safe"]) == (31, "no")
    assert (compare_row(expand)["old_version_errors"], compare_row(expand)["rollback_safe"]) == (
        0, "yes; after contract: no")
    assert (compare_row(plain)["old_version_errors"], compare_row(plain)["rollback_safe"]) == (None, None)
    fields = compare_fields([rolling, expand])
    assert fields[-3:] == ("old_version_errors", "rollback_safe", "verdict")
    assert "rollback_safe" not in compare_fields([plain])
    cells = compare_cells([rolling, expand])
    assert cells[1][fields.index("rollback_safe")] == "yes; after contract: no"
