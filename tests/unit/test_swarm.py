"""The pure parts of the Swarm runtime: the manager check, task -> Instance, the service spec,
and the engine choice; plus the CLI against a fake engine that is not a swarm manager."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from sandbox.cli import main
from sandbox.config import load_settings
from sandbox.errors import UsageError, exit_code_for
from sandbox.fleet import engines, swarm
from sandbox.fleet import labels as L
from sandbox.fleet.engine import APP_PORT, Instance
from sandbox.fleet.versions import AppSpec
from tests.conftest import free_port

NET = "netid123"


def task(state: str, created: str = "2026-01-01T00:00:01Z", ip: str | None = "10.0.9.7",
         cid: str | None = "c1", net: str = NET, exit_code: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"State": state}
    if cid:
        status["ContainerStatus"] = {"ContainerID": cid, "ExitCode": exit_code}
    out: dict[str, Any] = {"CreatedAt": created, "Status": status, "Version": {"Index": 1}}
    if ip:
        out["NetworksAttachments"] = [
            {"Network": {"ID": "other"}, "Addresses": ["10.255.0.9/16"]},
            {"Network": {"ID": net}, "Addresses": [f"{ip}/24"]},
        ]
    return out


SERVICE = {
    "ID": "svc1",
    "CreatedAt": "2026-01-01T00:00:00Z",
    "Spec": {"Name": "p-app-2-abcdef", "Labels": L.project_labels("p", L.ROLE_APP, **{
        L.LABEL_SLOT: "2", L.LABEL_VERSION: "v2"})},
}


# -- the manager check ----------------------------------------------------------------------------
@pytest.mark.parametrize("info", [
    {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}},
    {"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}},  # a worker
    {"Swarm": {"LocalNodeState": "pending", "ControlAvailable": False}},
    {},
])
def test_not_a_manager_is_a_usage_error_naming_swarm_init(info: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="docker swarm init") as err:
        swarm.check_manager(info)
    assert exit_code_for(err.value) == 2 and "\n" not in str(err.value)


def test_a_manager_passes() -> None:
    swarm.check_manager({"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}})


# -- tasks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("state, expected", [
    ("new", "created"), ("pending", "created"), ("assigned", "created"), ("preparing", "created"),
    ("starting", "created"), ("running", "running"), ("complete", "exited"), ("failed", "exited"),
    ("shutdown", "exited"), ("rejected", "exited"), ("orphaned", "exited"),
])
def test_task_states_read_as_container_states(state: str, expected: str) -> None:
    assert swarm.container_state(task(state)) == expected


def test_no_task_is_gone() -> None:
    assert swarm.container_state(None) == "gone"


def test_latest_task_is_the_newest() -> None:
    old, new = task("failed", "2026-01-01T00:00:01Z"), task("running", "2026-01-01T00:00:09Z")
    assert swarm.latest_task([new, old]) is new and swarm.latest_task([old, new]) is new
    assert swarm.latest_task([]) is None


def test_task_ip_is_the_address_on_the_project_network_without_prefix() -> None:
    assert swarm.task_ip(task("running"), NET) == "10.0.9.7"
    assert swarm.task_ip(task("running"), "nope") is None
    assert swarm.task_ip(task("running", ip=None), NET) is None


def test_gateway_ips_map_containers_to_their_gwbridge_address() -> None:
    attrs = {"Containers": {"c1": {"IPv4Address": "192.168.32.3/20"}, "ingress-sbox": {"IPv4Address": ""}}}
    assert swarm.gateway_ips(attrs) == {"c1": "192.168.32.3"}
    assert swarm.gateway_ips({"Containers": None}) == {}


def test_a_running_task_is_an_instance_with_overlay_address_and_gateway_probe_address() -> None:
    inst = swarm.to_instance(SERVICE, task("running"), NET, {"c1": "192.168.32.3"})
    assert inst == Instance(id="svc1", name="p-app-2-abcdef", slot=2, version="v2", state="running",
                            ip="10.0.9.7", created="2026-01-01T00:00:00Z", probe_ip="192.168.32.3")
    assert inst.address == f"10.0.9.7:{APP_PORT}"  # what NGINX uses
    assert inst.probe_address == f"192.168.32.3:{APP_PORT}"  # what the controller probes


def test_an_ended_task_has_no_address() -> None:
    inst = swarm.to_instance(SERVICE, task("failed", exit_code=3), NET, {"c1": "192.168.32.3"})
    assert inst.state == "exited" and inst.address is None and inst.probe_address is None


def test_without_probe_ip_the_probe_uses_the_address() -> None:
    inst = Instance(id="x", name="x", slot=1, version="v1", state="running", ip="172.20.0.5", created="")
    assert inst.probe_address == inst.address == f"172.20.0.5:{APP_PORT}"


# -- the service spec -----------------------------------------------------------------------------
def test_service_spec_labels_dnsrr_one_replica_no_restart_and_hardening() -> None:
    spec = swarm.app_service_spec("p", 3, "v2", "sha256:abc", {"A": "1"}, "v1", name="p-app-3-000000")
    template = spec["task_template"]
    container = template["ContainerSpec"]
    expected = L.project_labels("p", L.ROLE_APP, **{L.LABEL_SLOT: "3", L.LABEL_VERSION: "v2",
                                                     L.LABEL_APP_PORT: str(APP_PORT), L.LABEL_FROM: "v1"})
    assert spec["name"] == "p-app-3-000000" and spec["labels"] == expected
    assert container["Labels"] == expected
    assert container["Image"] == "sha256:abc"  # an image id: Swarm does not try to pull it
    assert spec["endpoint_spec"]["Mode"] == "dnsrr"
    assert spec["mode"] == {"replicated": {"Replicas": 1}}
    assert template["RestartPolicy"]["Condition"] == "none"
    assert template["Networks"] == [{"Target": "p-net"}]
    assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]
    assert container["User"] == "10001:10001"
    assert container["Env"] == ["A=1"]
    assert container["StopGracePeriod"] == int(swarm.STOP_GRACE_S * 1e9)
    assert template["Resources"]["Limits"] == {"MemoryBytes": 128 * 1024 * 1024, "Pids": 128}
    assert container["Mounts"][0]["Type"] == "tmpfs" and container["Mounts"][0]["Target"] == "/tmp"


def test_service_spec_carries_your_apps_contract() -> None:
    contract = AppSpec(port=8080, stop_signal="SIGINT", stop_timeout=5, command=("serve", "--fast"),
                       memory="256m", read_only=False)
    spec = swarm.app_service_spec("p", 1, "green", "sha256:abc", {}, spec=contract, toy=False)
    container = spec["task_template"]["ContainerSpec"]
    assert spec["labels"][L.LABEL_APP_PORT] == container["Labels"][L.LABEL_APP_PORT] == "8080"
    assert container.get("User") is None  # your image keeps its USER; the toy app runs as 10001
    assert container["Args"] == ["serve", "--fast"] and container.get("Command") is None  # CMD, not ENTRYPOINT
    assert container["StopSignal"] == "SIGINT" and container["StopGracePeriod"] == 5 * 10**9
    assert container["ReadOnly"] is False and container["CapabilityDrop"] == ["ALL"]
    assert spec["task_template"]["Resources"]["Limits"]["MemoryBytes"] == 256 * 1024 * 1024
    default = swarm.app_service_spec("p", 1, "green", "i", {}, toy=False)["task_template"]["ContainerSpec"]
    assert default.get("StopSignal") is None and default.get("Args") is None  # the image's own


def test_an_instance_listens_on_the_port_its_service_says() -> None:
    service = {**SERVICE, "Spec": {**SERVICE["Spec"], "Labels": {**SERVICE["Spec"]["Labels"],  # type: ignore[dict-item]
                                                               L.LABEL_APP_PORT: "8080"}}}
    inst = swarm.to_instance(service, task("running"), NET, {"c1": "192.168.32.3"})
    assert inst.address == "10.0.9.7:8080" and inst.probe_address == "192.168.32.3:8080"


def test_service_names_are_per_slot_and_unique() -> None:
    a = swarm.app_service_spec("p", 1, "v1", "i", {})["name"]
    b = swarm.app_service_spec("p", 1, "v1", "i", {})["name"]
    assert a.startswith("p-app-1-") and a != b


# -- settings and the engine choice ---------------------------------------------------------------
def test_engine_setting_defaults_to_docker_and_rejects_others() -> None:
    assert load_settings({}, environ={}).engine == "docker"
    assert load_settings({}, environ={"SANDBOX_ENGINE": "swarm"}).engine == "swarm"
    with pytest.raises(UsageError, match="engine: 'k8s' must be one of docker, swarm"):
        load_settings({"engine": "k8s"}, environ={})


def test_in_place_on_swarm_is_rejected() -> None:
    with pytest.raises(UsageError, match="mode: in-place cannot run on Swarm"):
        load_settings({"engine": "swarm", "mode": "in-place"}, environ={})


def test_cli_rejects_in_place_on_swarm_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["roll", "--engine", "swarm", "--mode", "in-place"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "in-place cannot run on Swarm" in err


class FakeContainer:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels


class FakeClient:
    """Just enough of docker.DockerClient for recorded_engine."""

    def __init__(self, lb_labels: dict[str, str] | None, services: list[str] | Exception,
                 volume_labels: dict[str, str] | None = None) -> None:
        self._lb, self._services = lb_labels, services
        outer = self

        class Containers:
            def list(self, **kw: Any) -> list[FakeContainer]:
                return [FakeContainer(outer._lb)] if outer._lb is not None else []

        class Volume:
            def __init__(self) -> None:
                self.attrs = {"Labels": volume_labels}

        class Volumes:
            def list(self, **kw: Any) -> list[Volume]:
                assert f"{L.LABEL_ROLE}={L.ROLE_STATE}" in kw["filters"]["label"]
                return [Volume()] if volume_labels is not None else []

        class Services:
            def list(self, **kw: Any) -> list[str]:
                if isinstance(outer._services, Exception):
                    raise outer._services
                return outer._services

        self.containers, self.services, self.volumes = Containers(), Services(), Volumes()


@pytest.mark.parametrize("lb, services, expected", [
    ({L.LABEL_ENGINE: "swarm"}, [], "swarm"),
    ({L.LABEL_ENGINE: "docker"}, [], "docker"),
    ({}, [], None),  # a load balancer from before the label, no services
    (None, ["svc"], "swarm"),  # load balancer gone, services left: down must still find them
    (None, [], None),
])
def test_recorded_engine(lb: dict[str, str] | None, services: list[str], expected: str | None) -> None:
    assert engines.recorded_engine(FakeClient(lb, services), "p") == expected  # type: ignore[arg-type]


def test_recorded_engine_of_a_removed_load_balancer_is_on_its_state_volume() -> None:
    found = FakeClient(None, [], volume_labels={L.LABEL_ENGINE: "swarm"})
    assert engines.recorded_engine(found, "p") == "swarm"  # type: ignore[arg-type]


def test_recorded_engine_on_an_engine_without_swarm() -> None:
    import docker.errors
    not_manager = docker.errors.APIError("This node is not a swarm manager.")
    assert engines.recorded_engine(FakeClient(None, not_manager), "p") is None  # type: ignore[arg-type]


# -- the CLI against an engine that is not a swarm manager -----------------------------------------
class _NoSwarmEngine(BaseHTTPRequestHandler):
    """A Docker API that answers ping, version and info (Swarm inactive), and records every call."""

    calls: ClassVar[list[str]] = []

    def _send(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.calls.append(f"GET {self.path}")
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            self._send("OK")
        elif path.endswith("/version"):
            self._send({"ApiVersion": "1.41", "Version": "20.10.24"})
        elif path.endswith("/info"):
            self._send({"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}})
        else:
            self._send([])

    def do_POST(self) -> None:
        self.calls.append(f"POST {self.path}")
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def no_swarm_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    _NoSwarmEngine.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSwarmEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    try:
        yield _NoSwarmEngine.calls
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("command", ["up", "demo", "compare"])
def test_engine_swarm_without_a_swarm_is_one_line_exit_2_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], no_swarm_engine: list[str], command: str
) -> None:
    code = main([command, "--engine", "swarm", "--project", "nosw", "--port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "`docker swarm init`" in err, err
    assert any(c.endswith("/info") for c in no_swarm_engine)  # it asked the engine
    assert not [c for c in no_swarm_engine if c.startswith("POST")]  # and created nothing


# -- the runtime's calls, against a fake engine -----------------------------------------------------
class FakeService:
    def __init__(self, log: list[str], tasks: list[dict[str, Any]], sid: str = "svc1") -> None:
        self.id, self.name, self._log, self._tasks = sid, "p-app-1-aaaaaa", log, tasks
        self.attrs = {**SERVICE, "ID": sid}

    def tasks(self) -> list[dict[str, Any]]:
        return self._tasks

    def scale(self, n: int) -> None:
        self._log.append(f"scale {n}")
        self._tasks[:] = [task("shutdown", "2026-01-01T00:00:05Z", exit_code=0)]

    def remove(self) -> None:
        self._log.append("remove service")


class FakeSwarmClient:
    def __init__(self, service: FakeService, health: str | None = None) -> None:
        outer = self
        self.log = service._log

        class Services:
            def get(self, sid: str) -> FakeService:
                return service

            def list(self, **kw: Any) -> list[FakeService]:
                return [service]

        class Container:
            attrs: ClassVar[dict[str, Any]] = {"State": {"Health": {"Status": health}} if health else {}}

            def remove(self, force: bool = False, **kw: Any) -> None:
                outer.log.append(f"remove container force={force}")

        class Containers:
            def get(self, cid: str) -> Container:
                outer.log.append(f"get container {cid}")
                return Container()

        self.services, self.containers = Services(), Containers()


def _instance() -> Instance:
    return Instance(id="svc1", name="p-app-1-aaaaaa", slot=1, version="v1", state="running",
                    ip="10.0.9.7", created="", probe_ip="192.168.32.3")


@pytest.mark.asyncio
async def test_stop_scales_to_zero_reads_the_exit_code_then_removes_the_service() -> None:
    log: list[str] = []
    rt = swarm.SwarmEngine(FakeSwarmClient(FakeService(log, [task("running")])))  # type: ignore[arg-type]
    assert await rt.stop_app(_instance(), 20) == 0
    assert log == ["scale 0", "remove service"]


@pytest.mark.asyncio
async def test_kill_removes_the_task_container_at_once_then_the_service() -> None:
    log: list[str] = []
    rt = swarm.SwarmEngine(FakeSwarmClient(FakeService(log, [task("running", cid="c9")])))  # type: ignore[arg-type]
    await rt.kill_app(_instance())
    assert log == ["get container c9", "remove container force=True", "remove service"]


@pytest.mark.asyncio
@pytest.mark.parametrize("health", ["starting", "healthy", None])
async def test_health_is_the_task_containers_healthcheck_status(health: str | None) -> None:
    log: list[str] = []
    rt = swarm.SwarmEngine(FakeSwarmClient(FakeService(log, [task("running", cid="c9")]), health))  # type: ignore[arg-type]
    assert await rt.health(_instance()) == health
    assert log == ["get container c9"]  # the task's container, not the service id


@pytest.mark.asyncio
async def test_a_task_without_a_container_has_no_health_yet() -> None:
    rt = swarm.SwarmEngine(FakeSwarmClient(FakeService([], [task("pending", cid=None)]), "healthy"))  # type: ignore[arg-type]
    assert await rt.health(_instance()) is None


@pytest.mark.asyncio
async def test_swap_code_is_refused_on_swarm() -> None:
    rt = swarm.SwarmEngine(FakeSwarmClient(FakeService([], [])))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="in-place cannot run on Swarm"):
        await rt.swap_code("p", _instance(), b"")


def test_serving_addresses_are_the_running_tasks_meant_to_run() -> None:
    up = {**task("running"), "ID": "t1", "DesiredState": "running"}
    leaving = {**task("running", ip="10.0.9.8"), "ID": "t2", "DesiredState": "shutdown"}  # Swarm stops it
    starting = {**task("starting", ip="10.0.9.9"), "ID": "t3", "DesiredState": "running"}  # not healthy yet
    gone = {**task("shutdown", ip="10.0.9.10"), "ID": "t4", "DesiredState": "shutdown"}
    assert swarm.serving_addresses([up, leaving, starting, gone], NET) == {"t1": f"10.0.9.7:{APP_PORT}"}


# -- swarm-native: Swarm's own rolling update, in compare -------------------------------------------
@pytest.mark.parametrize("spec, order", [
    ("swarm-native", "stop-first"), ("swarm-native:stop-first", "stop-first"),
    (" swarm-native:start-first ", "start-first"),
])
def test_native_order_parses(spec: str, order: str) -> None:
    from sandbox.rollout.swarm_native import parse_order
    assert parse_order(spec) == order


@pytest.mark.parametrize("argv, needle", [
    (["compare", "--strategies", "swarm-native:stop-first"], "needs --engine swarm"),
    (["compare", "--engine", "swarm", "--strategies", "swarm-native:sideways"],
     "swarm-native takes :stop-first or :start-first"),
    (["compare", "--engine", "swarm", "--update-parallelism", "0"], "--update-parallelism: 0 must be 1 or more"),
    (["compare", "--engine", "swarm", "--update-delay", "-1"], "--update-delay: -1.0 must be in [0, 3600] seconds"),
    (["compare", "--engine", "swarm", "--stop-grace-period", "0"], "--stop-grace-period: 0.0 must be in (0, 3600]"),
    (["compare", "--engine", "swarm", "--update-failure-action", "explode"], "invalid choice: 'explode'"),
])
def test_native_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                            needle: str) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_native_update_config_carries_the_settings() -> None:
    from sandbox.rollout.swarm_native import update_policy
    s = load_settings({"engine": "swarm", "update_parallelism": 3, "update_delay": 1.5,
                       "update_failure_action": "rollback", "stop_grace_period": 12}, environ={})
    policy = update_policy(s, "start-first")
    assert policy.stop_grace_s == 12
    cfg = swarm.update_config(policy)
    assert cfg == {"Parallelism": 3, "Delay": 1_500_000_000, "FailureAction": "rollback", "Order": "start-first"}


def test_native_with_your_own_versions_is_one_line_exit_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sandbox.toml"  # compare takes your versions from the file only
    path.write_text('[sandbox]\nengine = "swarm"\n[versions]\ngreen = "my/app:1"\nblue = "my/app:2"\n')
    code = main(["compare", "--config", str(path), "--strategies", "one-at-a-time,swarm-native:start-first"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'swarm-native:start-first' rehearses the toy app only" in err, err


def test_native_settings_come_from_the_toml(tmp_path: Any) -> None:
    path = tmp_path / "sandbox.toml"
    path.write_text('[sandbox]\nengine = "swarm"\nupdate_parallelism = 2\nswarm_healthcheck = false\n')
    s = load_settings({}, config_path=path, environ={})
    assert (s.engine, s.update_parallelism, s.swarm_healthcheck) == ("swarm", 2, False)
