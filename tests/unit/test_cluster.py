"""The pure parts of `sandbox cluster`: the checks made before anything is created, a worker
node's container, and a Swarm task on another node as an Instance probed through the LB's relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.cli import main
from sandbox.fleet import cluster, swarm
from sandbox.fleet import labels as L
from sandbox.fleet.balancer import ADMIN_PORT, render
from sandbox.fleet.loadbalancer import LbState
from tests.unit.test_swarm import NET, SERVICE, task


@pytest.mark.parametrize("nodes", [0, 1, 9, -3])
def test_node_counts_out_of_bounds_are_one_line_exit_2(nodes: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["cluster", "up", "--nodes", str(nodes)])  # refused before any engine is asked
    err = capsys.readouterr().err
    assert code == 2 and f"--nodes {nodes}: a cluster has 2 to 8 nodes" in err and err.count("\n") == 1


@pytest.mark.parametrize(("euid", "kernel", "needle"), [
    (1000, None, "cluster up needs root"),
    (0, "the kernel has no vxlan module loaded (Swarm's overlay network between nodes needs it; modprobe vxlan)",
     "no vxlan module"),
])
def test_a_machine_that_cannot_run_a_cluster_is_one_line_exit_2_before_any_engine(
        euid: int, kernel: str | None, needle: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.os, "geteuid", lambda: euid)
    monkeypatch.setattr(cluster, "missing_kernel_support", lambda: kernel)
    monkeypatch.setattr(cluster, "_client", lambda: pytest.fail("an engine was asked"))
    code = main(["cluster", "up", "--nodes", "3"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_node_counts_in_bounds_pass() -> None:
    for nodes in range(cluster.MIN_NODES, cluster.MAX_NODES + 1):
        cluster.check_nodes(nodes)


def test_a_missing_kernel_module_is_named(tmp_path: Path) -> None:
    modules, filesystems = tmp_path / "module", tmp_path / "filesystems"
    modules.mkdir()
    filesystems.write_text("nodev\ttmpfs\nnodev\toverlay\n")
    assert "no vxlan module" in (cluster.missing_kernel_support(modules, filesystems) or "")
    (modules / "vxlan").mkdir()
    assert cluster.missing_kernel_support(modules, filesystems) is None  # overlay: a filesystem the kernel knows
    filesystems.write_text("nodev\ttmpfs\n")
    assert "no overlay module" in (cluster.missing_kernel_support(modules, filesystems) or "")


def test_the_engine_must_be_local_and_the_caller_root() -> None:
    assert "is not local" in (cluster.local_engine_problem("http://10.0.0.5:2375", 0) or "")
    assert "needs root" in (cluster.local_engine_problem("http+docker://localhost", 1000) or "")
    assert cluster.local_engine_problem("http+docker://localhost", 0) is None


@pytest.mark.parametrize(("swarm_info", "problem"), [
    ({"LocalNodeState": "inactive"}, None),  # cluster up makes the swarm
    ({"LocalNodeState": "active", "ControlAvailable": True}, None),  # a manager already: workers join it
    ({"LocalNodeState": "active", "ControlAvailable": False}, "a worker of another swarm"),
    ({"LocalNodeState": "pending"}, "swarm state is 'pending'"),
])
def test_the_swarm_state_the_engine_may_be_in(swarm_info: dict[str, Any], problem: str | None) -> None:
    found = cluster.swarm_problem({"Swarm": swarm_info})
    assert found is None if problem is None else problem in (found or "")


def test_a_worker_node_gets_what_an_engine_needs_and_no_more(tmp_path: Path) -> None:
    kw = cluster.node_run_kwargs("worker-2", "rolling-sandbox/node:abc", tmp_path / "w2", "/rolling-sandbox-worker-2")
    assert "privileged" not in kw  # refused on this kind of machine; the capabilities below are enough
    assert kw["cap_add"] == ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"] and kw["cgroupns"] == "host"
    assert kw["security_opt"] == ["seccomp=unconfined", "apparmor=unconfined"]
    assert kw["volumes"]["rolling-sandbox-cluster-worker-2-data"] == {"bind": "/var/lib/docker", "mode": "rw"}
    assert kw["volumes"][str(tmp_path / "w2")]["bind"] == cluster.NODE_SOCKET_DIR
    assert kw["entrypoint"][:2] == ["sh", "-c"] and "rm -f /var/run/docker.pid" in kw["entrypoint"][2]
    assert kw["command"][:5] == ["dockerd", "--host", "unix:///var/run/docker.sock",
                                 "--host", f"unix://{cluster.NODE_SOCKET_DIR}/docker.sock"]
    assert kw["command"][kw["command"].index("--cgroup-parent") + 1] == "/rolling-sandbox-worker-2"
    assert kw["network"] == cluster.NETWORK and kw["hostname"] == "worker-2"
    labels = kw["labels"]
    assert labels[L.LABEL_PROJECT] == cluster.CLUSTER and labels[L.LABEL_ROLE] == L.ROLE_NODE
    assert labels[L.LABEL_NODE_SOCKET] == str(tmp_path / "w2" / "docker.sock")


def on_node(node: str, state: str = "running") -> dict[str, Any]:
    return {**task(state), "NodeID": node}


WHERE = swarm.Placement("mgr", {"mgr": "host", "n2": "worker-1"}, relay=f"172.18.0.5:{ADMIN_PORT}/probe/")


def test_a_task_on_this_node_is_probed_on_docker_gwbridge() -> None:
    inst = swarm.to_instance(SERVICE, on_node("mgr"), NET, {"c1": "172.18.0.9"}, where=WHERE)
    assert (inst.node, inst.probe_ip, inst.probe_via) == ("host", "172.18.0.9", None)
    assert inst.probe_address == "172.18.0.9:8000"


def test_a_task_on_another_node_is_probed_through_the_relay() -> None:
    inst = swarm.to_instance(SERVICE, on_node("n2"), NET, {}, where=WHERE)
    assert (inst.node, inst.probe_ip) == ("worker-1", None)
    assert inst.address == "10.0.9.7:8000"  # NGINX reaches it on the overlay
    assert inst.probe_address == f"172.18.0.5:{ADMIN_PORT}/probe/10.0.9.7:8000"


def test_a_task_on_another_node_before_the_lb_runs_has_no_probe_route() -> None:
    inst = swarm.to_instance(SERVICE, on_node("n2"), NET, {}, where=swarm.Placement("mgr", {"n2": "worker-1"}))
    assert inst.probe_ip is None and inst.probe_via is None and inst.probe_address == inst.address


def test_one_node_has_no_placement() -> None:
    inst = swarm.to_instance(SERVICE, on_node("mgr"), NET, {"c1": "172.18.0.9"})
    assert inst.node == "" and inst.probe_address == "172.18.0.9:8000"


def test_the_relay_is_on_the_admin_listener_only() -> None:
    text = render("p", LbState(lb_apply="dynamic"), admin_token="t", admin_from="172.18.0.1")
    admin = text[text.index(f"listen {ADMIN_PORT};"):]
    assert "location ~ \"^/probe/(?<probe_target>" in admin and "allow 172.18.0.1;" in admin
    assert "/probe/" not in text[:text.index(f"listen {ADMIN_PORT};")]  # never on the users' port



def test_the_dashboard_has_a_column_per_node_and_a_lost_server_leaves_it() -> None:
    from sandbox.ui.state import RolloutState

    state = RolloutState()
    state.seed("p-app-1", 1, "v1", True, "vm")
    state.seed("p-app-2", 2, "v1", True, "worker-1")
    state.seed("p-app-3", 3, "v1", True, "")  # one engine: no node
    state.event({"t": 1.0, "phase": "start", "instance": "p-app-1-new", "slot": 1, "version": "v2", "node": "worker-2"})
    state.event({"t": 2.0, "phase": "died", "instance": "p-app-2", "slot": 2, "version": "v1", "node": "worker-1"})
    snap = state.snapshot()
    assert snap["nodes"] == ["vm", "worker-1", "worker-2"]
    servers = {s["name"]: s for slot in snap["slots"] for s in slot["servers"]}
    assert servers["p-app-1-new"]["node"] == "worker-2" and servers["p-app-2"]["state"] == "removed"
