"""A Docker engine of a test's own: a second ``dockerd`` beside the shared one, started and ended by the test.

The Swarm tests put this engine into a swarm (the shared engine never joins one: ``docker swarm leave``
breaks name resolution for containers already running on its bridge networks, moby/moby#45144, and a
user's own engine must not be put into a swarm by a test suite), so they run beside every other test.
Tests that restart an engine mid-roll restart this one.

It must never disturb the shared engine, which rules out three obvious settings:

- ``--bridge=none`` makes dockerd *delete* the host's ``docker0`` as it starts (it removes the default
  bridge interface when its default network is disabled): the shared engine's default network then
  fails every container on it ("could not find bridge docker0"). So the engine gets a default bridge of
  its own, created here under another name (``--bridge NAME``).
- ``--default-address-pool`` makes dockerd delete ``docker0`` each time it restarts (it does so when it
  finds its earlier default network). So its networks come from Docker's default pools, which skip the
  subnets already routed on the host (the shared engine's).
- iptables: two daemons must not rewrite the same ``DOCKER`` chains, so ``--iptables=false
  --ip6tables=false``. Bridge networks, container DNS names and ports published on 127.0.0.1 (through
  docker-proxy) work without them; nothing here needs NAT to the outside.

Its data root, exec root, pidfile and socket live in a temporary directory; it is ended by the pid it
wrote (never by name), its mounts are unmounted and the directory removed. :func:`host_state` (the index
and address of ``docker0``, and any iptables rule naming this engine's bridges) is compared before and
after by :func:`private_engine`. dockerd runs as root: so do these tests (as CI does).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker

from tests.conftest import free_port

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


def _run(*cmd: str, env: dict[str, str] | None = None, input_from: subprocess.Popen[bytes] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=input_from.stdout if input_from else None)


def free_udp_port(low: int = 20000, high: int = 49151) -> int:
    """A UDP port no one holds, in the range Swarm accepts for its VXLAN data path (1024-49151)."""
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
            s.bind(("0.0.0.0", port))
            return port
    raise AssertionError(f"no free UDP port in {low}-{high}")


def host_state(names: tuple[str, ...]) -> dict[str, object]:
    """What a private engine must leave as it found: ``docker0`` (its index and addresses, or absent) and
    the iptables rules that name any of ``names`` (the private engine's bridges: there must be none)."""
    link = _run("ip", "-o", "link", "show", "docker0")
    addr = _run("ip", "-o", "-4", "addr", "show", "docker0")
    rules = [line for table in ("filter", "nat") for line in _run("iptables", "-t", table, "-S").stdout.splitlines()
             if any(n in line for n in names)]
    return {"docker0": link.stdout.split(":", 1)[0] if link.returncode == 0 else None,
            "docker0_inet": [f.split()[3] for f in addr.stdout.splitlines()], "rules_naming_ours": rules}


@dataclass
class PrivateEngine:
    """A dockerd of its own under ``root``; :meth:`start`, :meth:`stop`, :meth:`restart`, :meth:`close`."""

    root: Path
    bridge: str = field(default_factory=lambda: f"rsbr{secrets.token_hex(4)}")
    gwbridge: str = ""
    _client: docker.DockerClient | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        """The environment a ``sandbox`` command (or ``docker``) needs to act on this engine."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=f"unix://{self.sock}", timeout=120)
        return self._client

    def pid(self) -> int | None:
        try:
            return int((self.root / "dockerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        if _run("ip", "link", "show", self.bridge).returncode != 0:
            made = _run("ip", "link", "add", self.bridge, "type", "bridge")
            assert made.returncode == 0, f"cannot create the private engine's bridge {self.bridge}: {made.stderr}"
        dockerd = shutil.which("dockerd")
        assert dockerd, "dockerd is not installed (scripts/setup.sh installs Debian's docker.io)"
        with (self.root / "dockerd.log").open("ab") as log:
            self._proc = subprocess.Popen([dockerd, "--data-root", str(self.root / "data"),
                                           "--exec-root", str(self.root / "exec"),
                                           "--pidfile", str(self.root / "dockerd.pid"), "-H", f"unix://{self.sock}",
                                           "--bridge", self.bridge, "--iptables=false", "--ip6tables=false"],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(Exception):
                if self.sock.exists() and self.client.ping():
                    return
            assert time.monotonic() < deadline, (
                f"the private engine did not answer within {START_TIMEOUT_S:g} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM to the pid it wrote, then wait (SIGKILL after STOP_TIMEOUT_S): as a host's restart would."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        proc, self._proc = self._proc, None
        pid = self.pid() or (proc.pid if proc is not None else None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            (self.root / "dockerd.pid").unlink()

    def restart(self) -> None:
        self.stop()
        self.start()

    def load_images(self, *names: str) -> None:
        """Copy images from the shared engine (the one this process's environment names) with ``docker save |
        docker load``: no registry is needed."""
        with subprocess.Popen(["docker", "save", *names], stdout=subprocess.PIPE) as save:
            loaded = _run("docker", "load", env=self.env, input_from=save, timeout=300)
        assert save.returncode == 0 and loaded.returncode == 0, f"docker save | docker load: {loaded.stderr}"

    def init_swarm(self) -> None:
        """A single-node swarm on 127.0.0.1 at free ports, its docker_gwbridge under a Linux name of its own."""
        self.gwbridge = f"rsgw{self.bridge[4:]}"
        self.client.networks.create("docker_gwbridge", driver="bridge", options={
            "com.docker.network.bridge.name": self.gwbridge,
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "true"})
        self.client.swarm.init(advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{free_port()}",
                               data_path_port=free_udp_port())

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        """Leave the swarm (if any), end the engine, unmount what it left and remove it all, bridges too."""
        with contextlib.suppress(Exception):
            if self.sock.exists() and self.client.info().get("Swarm", {}).get("LocalNodeState") == "active":
                self.client.swarm.leave(force=True)
                with contextlib.suppress(Exception):
                    self.client.networks.get("docker_gwbridge").remove()
        self.stop()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.root))]
        for mount in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", mount)
        shutil.rmtree(self.root, ignore_errors=True)
        for name in (self.bridge, self.gwbridge):
            if name and _run("ip", "link", "show", name).returncode == 0:
                _run("ip", "link", "del", name)


@contextlib.contextmanager
def private_engine(*images: str) -> Iterator[PrivateEngine]:
    """A started private engine holding ``images`` (copied from the shared engine); the host as found afterwards."""
    engine = PrivateEngine(Path(tempfile.mkdtemp(prefix="rs-engine-")))
    names = (engine.bridge, f"rsgw{engine.bridge[4:]}")
    before = host_state(names)
    try:
        engine.start()
        if images:
            engine.load_images(*images)
        yield engine
    finally:
        engine.close()
        after = host_state(names)
        assert after == before, f"the private engine changed the host: {before} -> {after}"
