"""Header and cookie routing (X-Sandbox-Version, sandbox_version) and --pause-at-mixed, without
Docker: the rendered configs of both LB modes, the admin body, the LB log's ``route``, the crossing
figures that leave routed requests out, the plan's mixed pause point over every strategy, the
steering's planned pause, the mixed checks' environment and the settings."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import Counter
from typing import Any

import pytest

from sandbox.config import load_settings
from sandbox.errors import UsageError
from sandbox.fleet import nginx_log
from sandbox.fleet.balancer import admin_body, parse_admin_body, render, version_routes
from sandbox.fleet.loadbalancer import ROUTE_COOKIE, ROUTE_HEADER, LbState, Upstream
from sandbox.results.markdown import markdown_page
from sandbox.results.measure import measure, routed_rids
from sandbox.results.text import summary_text
from sandbox.rollout import mixed, steer
from sandbox.rollout import plan as planner
from sandbox.rollout.rehearsal import Rehearsal
from sandbox.rollout.steer import PLAN_MIXED, Steering, Who
from sandbox.rollout.strategies import REGISTRY
from sandbox.ui.progress import Progress
from tests.unit.test_measure import MIXED, row
from tests.unit.test_rehearsal import World, settings
from tests.unit.test_report import _report
from tests.unit.test_steer import _paused, _rolling

MIXED_SET = [Upstream("p-app-1", "10.9.0.1:8000", "v1"), Upstream("p-app-2", "10.9.0.2:8000", "v2"),
             Upstream("p-app-3", "10.9.0.3:8000", "v1")]


def block(text: str, head: str) -> str:
    """The ``{ ... }`` block of the config that opens with ``head``."""
    start = text.index(head)
    return text[start:text.index("}", start) + 1]


# --------------------------------------------------------------------------- reload mode
def test_reload_mode_with_two_versions_has_an_upstream_per_version_and_a_map_on_the_header() -> None:
    text = render("p", LbState(generation=2, upstreams=MIXED_SET))
    assert "map $http_x_sandbox_version $sandbox_route" in text  # the header first ...
    assert '""      $cookie_sandbox_version;' in block(text, "map $http_x_sandbox_version")  # ... else the cookie
    v1, v2 = block(text, "upstream app_version_1 {"), block(text, "upstream app_version_2 {")
    assert re.findall(r"server (\S+);", v1) == ["10.9.0.1:8000", "10.9.0.3:8000"]
    assert re.findall(r"server (\S+);", v2) == ["10.9.0.2:8000"]
    assert len(re.findall(r"server (\S+);", block(text, "upstream app {"))) == 3  # unrouted: every server
    route_map = block(text, "map $sandbox_route $sandbox_pass")
    assert re.findall(r"^\s+(\S+)\s+(\S+);$", route_map, re.M) == [
        ('""', "app"), ("v1", "app_version_1"), ("v2", "app_version_2"), ("default", '""')]
    assert text.count("proxy_pass http://$sandbox_pass;") == 2 and "proxy_pass http://app;" not in text
    assert 'if ($sandbox_pass = "") {' in text and "no server of version $sandbox_route_shown is attached" in text
    assert '"route":"$sandbox_route"' in text  # the access log names the version asked


def test_reload_mode_with_one_version_routes_it_to_app_and_refuses_the_others() -> None:
    text = render("p", LbState(upstreams=[MIXED_SET[0], MIXED_SET[2]]))
    assert "app_version_" not in text and "proxy_pass http://app;" in text
    route_map = block(text, "map $sandbox_route $sandbox_pass")
    assert re.findall(r"^\s+(\S+)\s+(\S+);$", route_map, re.M) == [('""', "app"), ("v1", "app"), ("default", '""')]
    assert 'if ($sandbox_pass = "") {' in text


def test_reload_mode_with_no_server_has_no_routing() -> None:
    text = render("p", LbState(upstreams=[]))
    assert "$sandbox_pass" not in text and "return 503" in text


def test_version_routes_name_upstreams_by_rank_and_escape_the_maps_own_words() -> None:
    ups = [Upstream("a", "10.0.0.1:8000", "default"), Upstream("b", "10.0.0.2:8000", "1.4.2-rc_1"),
           Upstream("c", "10.0.0.3:8000", "default")]
    routes = version_routes(ups)
    assert [(r["version"], r["key"], r["upstream"], [s.name for s in r["servers"]]) for r in routes] == [
        ("default", "\\default", "app_version_1", ["a", "c"]), ("1.4.2-rc_1", "1.4.2-rc_1", "app_version_2", ["b"])]
    assert "        \\default app_version_1;" in render("p", LbState(upstreams=ups))
    assert version_routes(ups[:1])[0]["upstream"] == "app"


def test_sticky_reload_hashes_within_each_version_too() -> None:
    text = render("p", LbState(upstreams=MIXED_SET, sticky=True))
    assert "hash $sticky_key consistent;" in block(text, "upstream app_version_2 {")


# --------------------------------------------------------------------------- dynamic mode
def dynamic_text() -> str:
    return render("p", LbState(upstreams=MIXED_SET, lb_apply="dynamic"), admin_token="t0ken")


def test_dynamic_mode_routes_first_then_balances() -> None:
    text = dynamic_text()
    assert "local function route(list)" in text
    assert "local list = route(servers())" in text  # the balancer's first selection step
    access = text[text.index("function M.access()"):text.index("function M.balance()")]
    assert "#route(list) == 0" in access and "ngx.status = 503" in access  # none of that version: 503
    assert "no server of version " in access and "ngx.var.sandbox_route_shown" in access
    assert "proxy_pass http://app;" in text and "$sandbox_pass" not in text  # Lua picks the server


def test_the_header_and_cookie_names_are_the_ones_the_checks_are_told() -> None:
    variable = "$http_" + ROUTE_HEADER.lower().replace("-", "_")
    for text in (dynamic_text(), render("p", LbState(upstreams=MIXED_SET))):
        assert f"map {variable} $sandbox_route" in text and f"$cookie_{ROUTE_COOKIE};" in text


def test_the_admin_body_names_each_servers_version_and_older_bodies_still_read() -> None:
    state = LbState(generation=4, size=3, upstreams=MIXED_SET, lb_apply="dynamic")
    body = admin_body(state)
    assert body.splitlines()[2:] == ["10.9.0.1:8000 v1", "10.9.0.2:8000 v2", "10.9.0.3:8000 v1"]
    assert parse_admin_body(body) == state
    before = "\n".join(["4", state.to_json(), *(u.address for u in MIXED_SET)]) + "\n"  # no version column
    assert parse_admin_body(before) == state


# --------------------------------------------------------------------------- the log and the figures
def test_the_log_row_carries_the_version_asked_only_when_one_was() -> None:
    line = {"time": 1.0, "rid": "r1", "status": 200, "upstream_addr": "10.9.0.2:8000", "route": "v2"}
    assert nginx_log.to_row(line) == {"time": 1.0, "rid": "r1", "status": 200, "servers": ["10.9.0.2:8000"],
                                      "route": "v2"}
    assert "route" not in nginx_log.to_row({**line, "route": ""})
    rows = nginx_log.parse('{"time":1,"rid":"a","status":200,"upstream_addr":"x:1","route":"v1"}\n'
                           '{"time":2,"rid":"b","status":503,"upstream_addr":"","route":"v9"}\n'
                           '{"time":3,"rid":"c","status":200,"upstream_addr":"x:1","route":""}\n')
    assert routed_rids(rows) == frozenset({"a", "b"})


def test_routed_requests_are_left_out_of_the_crossing_figures() -> None:
    # user a asked v2 then v1 by header: on purpose, no downgrade; user b was balanced to v2 then v1
    rows = [row(2.0, user="a", version="v2", rid="a1"), row(3.0, user="a", version="v1", rid="a2"),
            row(2.0, user="b", version="v2", rid="b1"), row(3.0, user="b", version="v1", rid="b2")]
    log = [nginx_log.to_row({"time": r["t"], "rid": r["rid"], "status": 200, "upstream_addr": "x:1",
                             "route": str(r["version"]) if r["user"] == "a" else ""}) for r in rows]
    routed = measure(rows, MIXED, nginx=log).exposure
    assert (routed.users_saw_both, routed.downgrades, routed.users_downgraded, routed.requests_routed) == (1, 1, 1, 2)
    plain = measure(rows, MIXED).exposure  # without the LB's log nothing is known to be routed
    assert (plain.users_saw_both, plain.downgrades, plain.requests_routed) == (2, 2, 0)
    assert routed.to_json()["requests_routed"] == 2
    assert type(routed).from_json(routed.to_json()) == routed


# --------------------------------------------------------------------------- the plan's pause point
def attached_versions(fleet: list[planner.Server], ps: planner.PlanSettings, steps: list[planner.Step]) -> set[str]:
    return {s.version for s in planner.simulate(fleet, ps, steps).fleet if s.attached}


CASES = [(name, mode, size, batch) for name, strategy in REGISTRY.items()
         for mode in ("replace", "in-place") if mode == "replace" or strategy.in_place
         for size in (1, 2, 3, 5) for batch in (1, 2)]


@pytest.mark.parametrize(("strategy", "mode", "size", "batch"), CASES)
def test_the_mixed_pause_point_is_the_first_moment_both_versions_are_attached(
        strategy: str, mode: str, size: int, batch: int) -> None:
    fleet = [planner.Server(f"a{i}", i, "v1", True) for i in range(1, size + 1)]
    ps = planner.PlanSettings(size=size, to_version="v2", strategy=strategy, batch=min(batch, max(1, size - 1)),
                              mode=mode)
    merged = planner.merge_reloads(planner.plan(fleet, ps))
    steps, at = planner.mixed_pause_point(fleet, ps, merged)
    planner.validate(fleet, ps, steps)  # still a plan that gets there
    mixed_after = [k for k in range(1, len(steps) + 1) if len(attached_versions(fleet, ps, steps[:k])) >= 2]
    if at is None:  # never mixed before the end (one switch, or a fleet of one)
        assert not [k for k in mixed_after if k < len(steps)] and steps == merged
        return
    assert mixed_after[0] == at and 0 < at < len(steps)
    if steps != merged:  # only a reattach is split, into its attach and its detach, around the pause
        assert len(steps) == len(merged) + 1 and (steps[at - 1].action, steps[at].action) == ("attach", "detach")
    if REGISTRY[strategy].graceful:  # paused with every slot serving
        sim = planner.simulate(fleet, ps, steps[:at])
        assert len({s.slot for s in sim.fleet if s.attached}) == size


def test_a_fleet_already_mixed_pauses_before_its_first_step() -> None:
    fleet = [planner.Server("a1", 1, "v2", True), planner.Server("a2", 2, "v1", True)]
    ps = planner.PlanSettings(size=2, to_version="v2")
    steps = planner.merge_reloads(planner.plan(fleet, ps))
    assert planner.mixed_pause_point(fleet, ps, steps) == (steps, 0)


# --------------------------------------------------------------------------- steering and settings
@pytest.mark.asyncio
async def test_the_planned_mixed_pause_is_by_the_plan_and_says_how_to_reach_each_version() -> None:
    said: list[str] = []
    seen: list[tuple[str, dict[str, object]]] = []
    s = Steering(pause_at=1, planned=PLAN_MIXED, say=said.append, emit=lambda p, d: seen.append((p, d)))
    step = planner.Step("start", (planner.Ref(1),), 1)
    gate = asyncio.create_task(s.gate(step, 1))
    await asyncio.sleep(0.02)
    assert s.state == "paused" and s.paused_by == PLAN_MIXED and not gate.done()
    assert said[0].startswith("paused at the first moment both versions serve, as planned (--pause-at-mixed")
    assert "X-Sandbox-Version" in said[0]
    assert seen == [("paused", {"by": "the plan (--pause-at-mixed)", "reason": "plan"})]
    s.resume(Who("alice", 42))
    await asyncio.wait_for(gate, 1)


@pytest.mark.asyncio
async def test_pause_at_mixed_holds_a_rehearsal_with_both_versions_attached_then_resume_completes() -> None:
    world = World()

    async def steer_it(world: World) -> None:
        answer = await _paused(world)
        assert answer["paused_by"]["user"] == PLAN_MIXED.user
        assert dict(Counter(u.version for u in world.balancer.state.upstreams)) == {"v1": 2, "v2": 1}
        assert (await steer.send("p", "resume"))["state"] == "running"

    result = await _rolling(world, settings(pause_at_mixed=True), steer_it)
    assert result.report["outcome"] == "completed" and world.attached_versions() == {"v2"}
    assert "paused at the first moment both versions serve" in world.stream.getvalue()


@pytest.mark.asyncio
async def test_dry_run_shows_the_mixed_pause() -> None:
    world = World()
    prepared = await Rehearsal(settings(pause_at_mixed=True), runtime=world.runtime, progress=Progress(world.stream),
                               deps=world.deps, install_sigint=False).prepare()
    assert prepared.as_json()["pause_at_mixed"] is True and prepared.pause_at is not None
    assert "-- pause (--pause-at-mixed: both versions serve)" in prepared.describe()


def test_pause_at_mixed_and_pause_after_batch_are_one_pause_too_many() -> None:
    with pytest.raises(UsageError, match=r"^pause_at_mixed: give pause_at_mixed or pause_after_batch, not both"):
        load_settings({"pause_at_mixed": True, "pause_after_batch": 1})
    assert load_settings({"pause_at_mixed": True}).pause_at_mixed


def test_compare_takes_no_pause_at_mixed_and_roll_does() -> None:
    from sandbox.cli import setting_flags

    assert setting_flags("roll")["pause_at_mixed"] == "--pause-at-mixed"
    assert "pause_at_mixed" not in setting_flags("compare")


def test_the_checks_environment_names_both_versions_and_how_to_reach_each() -> None:
    env: dict[str, Any] = mixed.environment(url="http://127.0.0.1:8080", project="shop", attached=["v2", "v1", "v1"],
                                            source="v1", target="v2")
    assert env == {"SANDBOX_URL": "http://127.0.0.1:8080", "SANDBOX_PROJECT": "shop", "SANDBOX_VERSIONS": "v1,v2",
                   "SANDBOX_FROM": "v1", "SANDBOX_TO": "v2", "SANDBOX_VERSION_HEADER": "X-Sandbox-Version",
                   "SANDBOX_VERSION_COOKIE": "sandbox_version"}


def test_the_report_says_how_many_requests_were_routed_only_when_some_were() -> None:
    report = _report()
    assert "routed" not in summary_text(report) and "routed by header" not in markdown_page(report)
    routed = dataclasses.replace(report, figures=dataclasses.replace(
        report.figures, exposure=dataclasses.replace(report.figures.exposure, requests_routed=7)))
    assert "  routed         7 requests named their version" in summary_text(routed)
    assert ("| requests routed by header or cookie (left out of the mixed window, saw both, downgrades, flips) "
            "| 7 |") in markdown_page(routed)


def test_status_says_how_to_reach_each_version_only_while_both_are_attached(capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox.cli import _print_status

    def data(versions: list[str]) -> dict[str, Any]:
        return {"project": "p", "lb": {"url": "http://127.0.0.1:8080", "state": "running", "upstreams": versions,
                                       "lb_apply": "dynamic"},
                "instances": [{"name": f"p-app-{n}", "slot": n, "version": v, "state": "running",
                               "address": f"10.0.0.{n}:8000", "attached": True} for n, v in enumerate(versions, 1)]}

    _print_status(data(["v1", "v2", "v1"]))
    assert ("v1 and v2 attached: reach one with curl -H 'X-Sandbox-Version: v1' http://127.0.0.1:8080/ "
            "(or cookie sandbox_version=v1)") in capsys.readouterr().out.splitlines()
    _print_status(data(["v1", "v1"]))
    assert "reach one" not in capsys.readouterr().out


def test_servers_of_no_known_version_get_no_route_and_a_valid_admin_body() -> None:
    """swarm-native attaches tasks whose version it does not know (version ""): reload mode gives them
    no route of their own (a "" map key would repeat the map's own ""), and the admin body's line is
    the address alone, which the dynamic LB accepts (a "?" was refused: bad version name)."""
    from sandbox.fleet.balancer import admin_body, version_routes
    from sandbox.fleet.loadbalancer import LbState, Upstream
    ups = [Upstream(name="a", address="10.0.1.4:8000", version=""), Upstream(name="b", address="10.0.1.5:8000",
                                                                          version="")]
    assert version_routes(ups) == []
    lines = admin_body(LbState(upstreams=ups)).splitlines()
    assert [line.strip() for line in lines[2:]] == ["10.0.1.4:8000", "10.0.1.5:8000"]
