"""Versions named by the user: flags, sandbox.toml, the load balancer's label, and a rehearsal between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.config import Settings, load_settings
from sandbox.errors import EXIT_USAGE, UsageError, exit_code_for
from sandbox.fleet import labels as L
from sandbox.fleet import versions
from tests.unit.test_rehearsal import World, settings

MAP = {"green": "myapp:1.4.1", "blue": "registry.local:5000/team/myapp:1.4.2"}


def test_pairs_parse_in_order() -> None:
    assert versions.parse_pairs(["green=myapp:1", "1.4.2=myapp@sha256:" + "a" * 64], "image") == {
        "green": "myapp:1", "1.4.2": "myapp@sha256:" + "a" * 64}


@pytest.mark.parametrize(("pairs", "message"), [
    (["green"], "must look like NAME=IMAGE"),
    (["green="], "must look like NAME=IMAGE"),
    (["=myapp:1"], "image: '' must be"),
    (["a b=myapp:1"], "image: 'a b' must be"),
    (["green=a:1", "green=b:1"], "given twice"),
])
def test_malformed_pairs_are_one_line_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        versions.parse_pairs(pairs, "image")


@pytest.mark.parametrize("ref", ["MyApp:1", "myapp:", "myapp:1:2", "-x:1", "myapp@sha256:zz", "my app"])
def test_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(UsageError, match=r"^image: green=.* is not a valid image reference"):
        Settings(images={"green": ref})


def test_well_formed_references_pass() -> None:
    Settings(images=MAP, version="blue")  # no error
    with pytest.raises(UsageError, match=r"^version: unknown version 'v1'; declared: green, blue"):
        Settings(images=MAP, version="v1")
    with pytest.raises(UsageError, match=r"^to_version: unknown version 'red'"):
        Settings(images=MAP, to_version="red")
    with pytest.raises(UsageError, match=r"^version: unknown version 'v3'; declared: v1, v2"):
        Settings(version="v3")  # the toy app has v1 and v2


def test_build_needs_a_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^build: green=.*: no Dockerfile"):
        Settings(builds={"green": str(tmp_path)})
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    Settings(builds={"green": str(tmp_path)})
    with pytest.raises(UsageError, match="also given as --image"):
        Settings(builds={"green": str(tmp_path)}, images={"green": "x:1"})


def test_pick_defaults_first_for_up_and_last_for_roll() -> None:
    assert versions.pick(MAP, "", default_last=False, what="version") == "green"
    assert versions.pick(MAP, "", default_last=True, what="to") == "blue"
    assert versions.pick(MAP, "green", default_last=True, what="to") == "green"
    with pytest.raises(UsageError, match=r"^to: unknown version 'v2'; this fleet has green, blue$"):
        versions.pick(MAP, "v2", default_last=True, what="to")


def test_label_round_trip_keeps_the_order() -> None:
    text = versions.to_label(MAP, toy=False)
    assert versions.from_label(text) == (MAP, False)
    assert list(versions.from_label(text)[0]) == ["green", "blue"]  # type: ignore[index]
    assert versions.from_label(None) is None and versions.from_label("{not json") is None


def test_source_is_the_fleets_other_version() -> None:
    assert versions.source_version(["green", "green", "blue"], "blue", None) == "green"
    assert versions.source_version(["blue", "blue"], "blue", "green") == "green"  # already there
    assert versions.source_version(["blue"], "blue", None) == "blue"


def test_toml_versions_and_app_tables(tmp_path: Path) -> None:
    (tmp_path / "app2").mkdir()
    (tmp_path / "app2" / "Dockerfile").write_text("FROM scratch\n")
    config = tmp_path / "sandbox.toml"
    config.write_text('[sandbox]\nsize = 2\n[versions]\ngreen = "myapp:1"\nblue = { build = "app2" }\n'
                      '[app]\nversion = "green"\napp_env = { A = "1" }\n')
    s = load_settings(config_path=config, environ={})
    assert (s.size, dict(s.images), dict(s.builds), s.version, dict(s.app_env)) == (
        2, {"green": "myapp:1"}, {"blue": str(tmp_path / "app2")}, "green", {"A": "1"})
    config.write_text('[versions]\ngreen = 3\n')
    with pytest.raises(UsageError, match=r"versions.green must be"):
        load_settings(config_path=config, environ={})


def _user_world(version: str = "green", rollout: dict | None = None) -> World:
    world = World(version=version, rollout=rollout)
    world.runtime.app_images = dict(MAP)
    world.runtime.lbs["p"].labels[L.LABEL_VERSIONS] = versions.to_label(MAP, toy=False)
    return world


@pytest.mark.asyncio
async def test_roll_between_user_versions_from_the_lb_label() -> None:
    world = _user_world()
    result = await world.rehearse(settings())  # no --to: the last declared, blue
    assert (result.report["from_version"], result.report["to_version"], result.exit_code) == ("green", "blue", 0)
    assert world.attached_versions() == {"blue"}
    assert {i.version for i in world.runtime.containers.values()} == {"blue"}
    rolled_back = await world.rehearse(settings(), kind="rollback")  # the target: the record's "from"
    assert (rolled_back.report["to_version"], rolled_back.exit_code) == ("green", 0)
    assert world.attached_versions() == {"green"}


@pytest.mark.asyncio
async def test_unknown_target_touches_nothing() -> None:
    world = _user_world()
    with pytest.raises(UsageError, match=r"^to: unknown version 'v2'"):
        await world.rehearse(settings(), to_version="v2")
    assert world.runtime.log == [] and world.balancer.applied == []


@pytest.mark.asyncio
async def test_user_version_never_ready_rolls_back_to_it() -> None:
    world = World(version="green", unready=frozenset({"blue"}))
    world.runtime.app_images = dict(MAP)
    world.runtime.lbs["p"].labels[L.LABEL_VERSIONS] = versions.to_label(MAP, toy=False)
    result = await world.rehearse(settings())
    assert (result.report["outcome"], result.exit_code) == ("rolled_back", 1)
    assert world.attached_versions() == {"green"}


# -- the app's contract ---------------------------------------------------------------------------

def test_app_spec_from_settings_and_back_from_the_label() -> None:
    s = Settings(images=MAP, app_port=80, health_path="/status/200", stop_signal="sigquit", stop_timeout=5,
                 app_command="gunicorn -b '0.0.0.0:80' httpbin:app", memory="256m", read_only=False)
    spec = s.app_spec()
    assert spec == versions.AppSpec(port=80, health_path="/status/200", stop_signal="SIGQUIT", stop_timeout=5,
                                    command=("gunicorn", "-b", "0.0.0.0:80", "httpbin:app"), memory="256m",
                                    read_only=False)
    assert versions.spec_from_label(versions.to_label(MAP, False, spec)) == spec
    assert versions.spec_from_label(None) == versions.AppSpec()  # a fleet from before: the defaults


@pytest.mark.parametrize(("extra", "message"), [
    ({"app_port": 0}, "app_port: 0 must be between"),
    ({"health_path": "status"}, "health_path: 'status' must start with /"),
    ({"stop_signal": "SIGFOO"}, "stop_signal: 'SIGFOO' must be one of"),
    ({"stop_timeout": 0}, "stop_timeout: 0 must be in"),
    ({"memory": "lots"}, "memory: 'lots' must look like"),
    ({"app_command": "run 'unclosed"}, "command: No closing quotation"),
])
def test_bad_contract_values_name_the_field(extra: dict, message: str) -> None:
    with pytest.raises(UsageError, match=f"^{message}"):
        Settings(**extra)


def _contract_world(spec: versions.AppSpec, unready: frozenset[str] = frozenset()) -> World:
    world = World(version="green", unready=unready)
    world.runtime.app_images = dict(MAP)
    world.runtime.lbs["p"].labels[L.LABEL_VERSIONS] = versions.to_label(MAP, toy=False, spec=spec)
    return world


@pytest.mark.asyncio
async def test_readiness_follows_the_contract() -> None:
    world = _contract_world(versions.AppSpec(health_path="/status/200", port=80))
    assert (await world.rehearse(settings())).exit_code == 0
    assert set(world.probe.paths) == {"/status/200"}
    assert {spec.port for spec, toy in world.runtime.specs} == {80} and not any(t for _, t in world.runtime.specs)
    world = _contract_world(versions.AppSpec())  # no health path, no HEALTHCHECK: the port accepts
    assert (await world.rehearse(settings())).exit_code == 0
    assert set(world.probe.paths) == {"tcp"}
    world = _contract_world(versions.AppSpec())
    world.runtime.healths = {"blue": "healthy"}  # the image's own HEALTHCHECK decides
    assert (await world.rehearse(settings())).exit_code == 0
    assert world.probe.paths == [] and any(line.startswith("health ") for line in world.runtime.log)


@pytest.mark.asyncio
async def test_an_unhealthy_healthcheck_rolls_back() -> None:
    world = _contract_world(versions.AppSpec())
    world.runtime.healths = {"blue": "unhealthy", "green": "healthy"}
    result = await world.rehearse(settings())
    assert (result.report["outcome"], result.exit_code) == ("rolled_back", 1)
    assert world.attached_versions() == {"green"}


# -- the plan before it runs ----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_dry_run_plans_and_touches_nothing() -> None:
    from sandbox.rollout.rehearsal import Rehearsal
    from sandbox.ui.progress import Progress

    world = World()
    world.runtime.vanish("a2")  # a stale upstream: a real prepare() would take it out
    rehearsal = Rehearsal(settings(), runtime=world.runtime, progress=Progress(world.stream),
                          deps=world.deps, install_sigint=False)
    prepared = await rehearsal.prepare()
    assert world.runtime.log == [] and world.balancer.applied == []  # nothing touched, nothing built
    plan = prepared.as_json()
    assert (plan["from"], plan["to"], plan["size"]) == ("v1", "v2", 3)
    assert plan["steps"][0]["action"] == "start" and all("batch" in st for st in plan["steps"])
    world = World()
    prepared = await Rehearsal(settings(strategy="surge", batch=1), runtime=world.runtime,
                               progress=Progress(world.stream), deps=world.deps,
                               install_sigint=False).prepare()
    assert (prepared.batches, prepared.peak, prepared.floor) == (3, 4, 3)
    assert "in 3 batches; at most 4 containers, at least 3 of 3 servers serving" in prepared.describe()
    assert world.runtime.log == []


@pytest.mark.asyncio
async def test_a_version_whose_local_image_is_gone_is_refused_before_anything_changes() -> None:
    """Never a pull from a registry behind the user's back: the target's (or the source's) image
    must be here, or the roll is bad input and touches nothing."""
    for gone in ("blue", "green"):
        world = _user_world()
        del world.runtime.app_images[gone]
        with pytest.raises(UsageError, match=rf"^image: {gone}=.*: no such local image") as err:
            await world.rehearse(settings())
        assert exit_code_for(err.value) == EXIT_USAGE
        assert world.runtime.log == [] and world.balancer.applied == []
