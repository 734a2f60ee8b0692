"""The migration step (``roll --migrate``), the orders schemas of the toy app and ``up --service postgres``,
against the fakes: records, the failure line, the answers after it, the rehearsal's order of things."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import commands
from sandbox.appserver.orders import BASELINE, Schema, schema_of
from sandbox.appserver.server import load_version_module
from sandbox.config import load_settings
from sandbox.errors import MigrationError, RolloutError, UsageError
from sandbox.fleet import sources
from sandbox.results.records import RequestRow
from sandbox.rollout import migrate
from sandbox.rollout.rehearsal import Prepared, Rehearsal
from sandbox.ui.progress import Progress
from tests.unit.fakes import FakeRuntime
from tests.unit.test_rehearsal import World, settings


def _row(t: float, status: int, version: str | None) -> RequestRow:
    return {"t": t, "t_end": t + 0.01, "user": "u1", "rid": f"ls-{t}", "method": "POST", "name": "/api/cart",
            "status": status, "version": version, "instance": None, "session": None, "latency_ms": 10.0,
            "error": None}


@pytest.mark.parametrize(("code", "status"), [(0, "passed"), (3, "failed"), (1, "failed"),
                                              (migrate.TIMED_OUT, "timed_out")])
def test_a_record_says_how_the_migration_ended(code: int, status: str) -> None:
    rec = migrate.record("python3 -m migrate expand", code, "x" * 5000 + "\nlast line", 1.23456,
                         batch=0, timeout_s=30)
    assert (rec.name, rec.status, rec.exit_code, rec.duration_s, rec.batch) == ("migration", status, code, 1.235, 0)
    assert rec.stdout_tail.endswith("last line") and len(rec.stdout_tail) == migrate.TAIL_CHARS
    assert ("killed after 30 s" in rec.stderr_tail) == (status == "timed_out")


def test_the_failure_line_names_the_command_its_exit_and_its_last_output() -> None:
    rec = migrate.record("python3 -m migrate breaking", 1, "migrate breaking: relation \"orders\" is locked\n",
                         0.5, batch=0, timeout_s=30)
    line = migrate.failure_line(rec)
    assert "\n" not in line
    assert line.startswith("migration 'python3 -m migrate breaking' failed (exit 1, 0.5 s) before the first batch")
    assert "not changed" in line and line.endswith('relation "orders" is locked')
    timed = migrate.record("sleep 99", migrate.TIMED_OUT, "", 2.0, batch=0, timeout_s=2)
    assert "(timed out, 2 s)" in migrate.failure_line(timed)


def test_answers_after_count_errors_by_serving_version_from_the_migrations_end() -> None:
    rows = [_row(9.0, 409, "v1"),  # before it ended: not the migration's
            _row(10.0, 409, "v1"), _row(10.5, 200, "v1"), _row(11.0, 500, "v1"),
            _row(11.0, 200, "v2"), _row(12.0, 0, None),  # no answer: a drop, counted elsewhere
            _row(12.5, 200, "v2")]
    assert migrate.answers_after(rows, 10.0) == {"v1": {"answers": 3, "errors": 2}, "v2": {"answers": 2, "errors": 0}}
    assert migrate.answers_after(rows, 13.0) == {}


def test_summary_says_when_it_ran_and_not_run_says_why() -> None:
    before = migrate.record("m", 0, "", 1, batch=0, timeout_s=9)
    after = migrate.record("m", 0, "", 1, batch=3, timeout_s=9)
    rows = [_row(5, 409, "v1")]
    assert migrate.summary(before, 1.0, rows)["at"] == "before"
    assert migrate.summary(after, 1.0, rows)["by_version_after"] == {"v1": {"answers": 1, "errors": 1}}
    assert migrate.summary(after, None, rows)["by_version_after"] == {}
    skipped = migrate.not_run("m", "not run: the rollout ended (rolled_back) first")
    assert skipped.status == "not_run" and skipped.reason and "rolled_back" in skipped.reason


# -- the toy app's orders schemas ------------------------------------------------------------------
def _version(name: str) -> Any:
    return load_version_module(sources.folder(name) / "app.py")


def test_each_version_says_which_schema_it_expects() -> None:
    assert schema_of(_version("app_v1"), False) == Schema("orders-v1", ("item_name",))
    assert schema_of(_version("app_v1"), True) == Schema("orders-v1", ("item_name",))  # v1 has no breaking mode
    assert schema_of(_version("app_v2"), False) == Schema("orders-v2-expand", ("title", "currency"))
    assert schema_of(_version("app_v2"), True) == Schema("orders-v2-breaking", ("title", "currency"))
    assert schema_of(object(), False) == Schema(*BASELINE)  # a version that declares none: the baseline


def test_the_sql_of_a_schema_names_its_columns() -> None:
    v1, v2 = Schema("orders-v1", ("item_name",)), Schema("orders-v2-breaking", ("title", "currency"))
    assert v1.insert_sql() == "INSERT INTO orders (sid, item, item_name) VALUES (%s, %s, %s)"
    assert v1.values("s", 7) == ("s", 7, "item-7")
    assert v2.values("s", 7) == ("s", 7, "item-7", "EUR")
    assert v2.select_sql().startswith("SELECT item, title, currency FROM orders WHERE sid = %s")
    assert v2.as_order((7, "item-7", "EUR")) == {"item": 7, "title": "item-7", "currency": "EUR"}


def test_v2_ships_both_migrations_and_breaking_renames_what_v1_reads() -> None:
    text = (sources.folder("app_v2") / "migrate.py").read_text()
    assert "RENAME COLUMN item_name TO title" in text and "ADD COLUMN IF NOT EXISTS currency" in text
    assert not (sources.folder("app_v1") / "migrate.py").exists()


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"services": ("mysql",)}, "--service: 'mysql' must be one of postgres"),
    ({"services": ("postgres", "postgres")}, "names a service twice"),
    ({"migrate_at": "during"}, "--migrate-at"),
    ({"migrate_timeout_s": 0}, "--migrate-timeout"),
])
def test_bad_service_and_migration_settings_are_usage_errors(overrides: dict[str, Any], fragment: str,
                                                             tmp_path: Path) -> None:
    flags = {"services": "--service", "migrate_at": "--migrate-at", "migrate_timeout_s": "--migrate-timeout"}
    (tmp_path / "sandbox.toml").write_text("")
    with pytest.raises(UsageError, match=fragment):
        load_settings(overrides, config_path=tmp_path / "sandbox.toml", environ={}, flags=flags)


# -- up --service postgres, and the rehearsal with --migrate (fakes) --------------------------------
class _Db(FakeRuntime):
    """A runtime whose PostgreSQL server answers ``pg_isready`` only from the ``ready_after``-th probe."""

    def __init__(self, ready_after: int) -> None:
        super().__init__()
        self.probes, self.ready_after = 0, ready_after

    async def postgres_ready(self, project: str) -> tuple[bool, str]:
        self.probes += 1
        return self.probes >= self.ready_after, "127.0.0.1:5432 - no response"


@pytest.mark.asyncio
async def test_up_waits_for_the_database_and_says_what_the_probe_said_when_it_never_answers() -> None:
    db = _Db(ready_after=3)
    said: list[str] = []
    await commands.wait_for_database(db, "p", timeout_s=5, say=said.append)
    assert db.probes == 3 and said == ["postgres: p-postgres accepts connections"]
    never = _Db(ready_after=10**6)
    with pytest.raises(RolloutError, match=r"^the PostgreSQL server of 'p' was not ready within 0.2 s: "
                                           r"127.0.0.1:5432 - no response$"):
        await commands.wait_for_database(never, "p", timeout_s=0.2, say=said.append)


@pytest.mark.asyncio
async def test_a_failing_migration_before_the_first_batch_changes_nothing() -> None:
    world = World()
    world.runtime.migrate_result = (3, "about to fail\n")
    with pytest.raises(MigrationError, match=r"failed \(exit 3, .*not changed: about to fail$"):
        await world.rehearse(settings(migrate="exit 3"))
    assert [e for e in world.runtime.log if not e.startswith("run_once")] == []  # no server, no LB change
    assert world.attached_versions() == {"v1"}


@pytest.mark.asyncio
async def test_the_migration_runs_in_the_target_image_with_the_new_servers_env_before_any_change() -> None:
    world = World()
    result = await world.rehearse(settings(migrate="python3 -m migrate expand"))
    assert result.exit_code == 0
    assert world.runtime.log[0] == "run_once p python3 -m migrate expand"  # before the first batch
    image, command, env = world.runtime.run_once_calls[0]
    assert (image, command) == ("app:v2", "python3 -m migrate expand")
    assert env["FLEET"] == "1" and env["NEW"] == "1"
    record = next(c for c in result.report["mixed_checks"] if c["name"] == "migration")
    assert (record["status"], record["batch"]) == ("passed", 0)
    assert any(c["name"] == "migration" and c["pass"] for c in result.report["verdict"]["checks"])


@pytest.mark.asyncio
async def test_after_runs_once_every_server_is_new_and_its_failure_fails_the_verdict() -> None:
    world = World()
    world.runtime.migrate_result = (1, "contract failed\n")
    result = await world.rehearse(settings(migrate="python3 -m migrate contract", migrate_at="after"))
    assert world.runtime.log.index("run_once p python3 -m migrate contract") > max(
        i for i, e in enumerate(world.runtime.log) if e.startswith("start "))
    assert world.attached_versions() == {"v2"} and result.exit_code == 1
    check = next(c for c in result.report["verdict"]["checks"] if c["name"] == "migration")
    assert check["pass"] is False and check["value"] == 1


@pytest.mark.asyncio
async def test_a_rollback_runs_no_migration() -> None:
    world = World(version="v2", rollout={"kind": "roll", "from": "v1", "to": "v2", "strategy": "one-at-a-time",
                                         "status": "completed"})
    await world.rehearse(replace(settings(), migrate="false"), kind="rollback")
    assert world.runtime.run_once_calls == []


async def _plan(world: World, **extra: Any) -> Prepared:
    return await Rehearsal(settings(**extra), runtime=world.runtime, progress=Progress(world.stream),
                           deps=world.deps, install_sigint=False).prepare()


@pytest.mark.asyncio
async def test_the_dry_run_plan_says_when_the_migration_runs_and_runs_nothing() -> None:
    world = World()
    for at, said in (("before", "migration before the first batch"), ("after", "migration after the last")):
        prepared = await _plan(world, migrate="python3 -m migrate expand", migrate_at=at)
        assert f"  {said}, in a one-off v2 container: python3 -m migrate expand" in prepared.describe().splitlines()
        assert prepared.as_json()["migrate"] == {"command": "python3 -m migrate expand", "at": at}
    assert world.runtime.run_once_calls == [] and world.runtime.log == []
    plain = await _plan(world)
    assert plain.as_json()["migrate"] is None and "migration" not in plain.describe()


@pytest.mark.parametrize(("seen", "limit", "status", "value"), [
    ({"v1": {"answers": 169, "errors": 69}, "v2": {"answers": 312, "errors": 0}}, 0, "FAIL", 69),
    ({"v1": {"answers": 169, "errors": 69}, "v2": {"answers": 312, "errors": 1}}, 70, "PASS", 70),
    ({"v1": {"answers": 50, "errors": 0}, "v2": {"answers": 60, "errors": 0}}, 0, "PASS", 0),
    ({}, 0, "NOT_RUN", None),
])
def test_the_migration_errors_check_judges_every_versions_errors_after_it(
        seen: dict[str, Any], limit: int, status: str, value: int | None) -> None:
    check = migrate.errors_check({"status": "passed", "by_version_after": seen}, limit)
    assert (check.name, check.status, check.value, check.limit) == ("migration_errors", status, value, limit)
    if seen:
        assert check.reason and "v1 " + str(seen["v1"]["errors"]) + " of " + str(seen["v1"]["answers"]) in check.reason
    assert migrate.errors_check({"status": "not_run", "by_version_after": seen}, 0).status == "NOT_RUN"


@pytest.mark.asyncio
async def test_without_load_the_migration_errors_are_not_run_never_passed() -> None:
    world = World()
    result = await world.rehearse(settings(migrate="python3 -m migrate expand"))
    check = next(c for c in result.report["verdict"]["checks"] if c["name"] == "migration_errors")
    assert check["status"] == "NOT_RUN" and check["skipped"] is True


def test_status_names_the_database_from_the_fleets_record_without_its_password() -> None:
    from sandbox.fleet.access import services
    url = "postgresql://app:s3cret@t1-postgres:5432/postgres"
    assert services({"DATABASE_URL": url, "APP_REDIS": "t1-redis:6379"}) == {
        "postgres": {"address": "t1-postgres:5432", "database": "postgres"}}
    assert "s3cret" not in repr(services({"DATABASE_URL": url}))
    assert services({}) == {} and services({"DATABASE_URL": "not a url"}) == {}
