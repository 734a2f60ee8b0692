"""A private Docker engine that a test starts, restarts and ends, in a network namespace of its own.

The shared engine is never restarted by a test (other fleets run on it), so a test that needs an
engine restart starts a second ``dockerd`` with its own data root, exec root, pid file and socket
under a temporary directory, and points the sandbox at it with ``DOCKER_HOST``.

It runs in a network namespace of its own (held by a ``sleep`` this module starts), because two
engines in one network namespace interfere, even with ``--iptables=false``:

- ``--bridge=none`` with ``--default-address-pool`` makes dockerd delete the interface named
  ``docker0`` at start (``removeDefaultBridgeInterface`` in moby's daemon_unix.go): in the host's
  namespace that is the shared engine's default bridge. Seen here: it vanished.
- with ``br_netfilter`` loaded (``net.bridge.bridge-nf-call-iptables = 1``, as here), bridged traffic
  between two containers of the private engine goes through the host's ``FORWARD`` chain, whose
  policy the shared engine sets to ``DROP`` and whose ``ACCEPT`` rules name only its own bridges:
  container DNS answered, but TCP between two containers timed out (the policy's counter rose).
  Only an ``iptables`` rule in the shared chain, or the sysctl off for every bridge, would let it
  through; both change the shared engine's firewall.

In a namespace of its own the private engine has its own ``docker0`` (none), its own (empty)
iptables, its own bridges and its own ``127.0.0.1``, and the host's are never touched. The price:
whatever talks to its published ports or its containers' addresses (the ``sandbox`` CLI, Locust,
the test's own requests) runs in that namespace too, through ``nsenter --net`` (:meth:`wrap`). The
Docker socket is a file, reachable from either namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.e2e.conftest import REPO, Cli

ADDRESS_POOL = "base=10.213.0.0/16,size=24"  # outside the shared engine's pools (172.17-31/16, 192.168/20s)
POOL_PREFIX = "10.213."
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0  # dockerd gives each container its stop timeout (10 s by default) then kills it


@dataclass
class PrivateEngine:
    """One private ``dockerd`` (with the ``containerd`` it supervises) and its network namespace."""

    root: Path
    holder: subprocess.Popen[bytes] | None = None  # `sleep infinity` in the namespace: it keeps it
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    bridges: set[str] = field(default_factory=set)  # its networks' bridge names, for the leak check

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        """Its ``DOCKER_HOST``."""
        return f"unix://{self.sock}"

    @property
    def netns(self) -> str:
        assert self.holder is not None, "start() first"
        return f"/proc/{self.holder.pid}/ns/net"

    @property
    def pidfile(self) -> Path:
        return self.root / "dockerd.pid"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run in the engine's network namespace."""
        return ["nsenter", f"--net={self.netns}", *cmd]

    def dockerd_args(self) -> list[str]:
        return ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.pidfile), "-H", self.host, "--bridge=none", "--iptables=false",
                "--ip6tables=false", "--default-address-pool", ADDRESS_POOL, "--storage-driver", "overlay2"]

    def start(self) -> None:
        """Start the namespace (once) and dockerd in it; wait until it answers."""
        if self.holder is None:
            self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"], start_new_session=True)
            deadline = time.monotonic() + 10
            while os.readlink(f"/proc/{self.holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                assert time.monotonic() < deadline, "unshare --net did not enter a namespace of its own"
                time.sleep(0.05)
            subprocess.run(self.wrap(["ip", "link", "set", "lo", "up"]), check=True)
        with self.log.open("ab") as out:  # setsid: a Ctrl-C to pytest does not reach it
            self.proc = subprocess.Popen(self.wrap(self.dockerd_args()), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"private dockerd exited {self.proc.returncode}:\n{self.tail()}")
            if self.sock.exists():
                with contextlib.suppress(docker.errors.DockerException, OSError), self.client(timeout=5) as c:
                    if c.ping():
                        break
            assert time.monotonic() < deadline, f"private dockerd silent for {START_TIMEOUT_S:.0f} s:\n{self.tail()}"
            time.sleep(0.2)
        assert int(self.pidfile.read_text()) == self.proc.pid, "the pid file names another process"

    def stop(self) -> None:
        """SIGTERM to the pid dockerd wrote (nsenter exec'd it: our child), wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = int(self.pidfile.read_text())
        assert pid == self.proc.pid, (pid, self.proc.pid)
        os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise AssertionError(f"private dockerd did not stop in {STOP_TIMEOUT_S:.0f} s:\n{self.tail()}") from None

    def restart(self) -> None:
        """Stop it and start it again with the same arguments (the namespace stays, as a host's does)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop dockerd, end the namespace, unmount what is left under the root and remove it."""
        try:
            self.stop()
        finally:
            if self.holder is not None and self.holder.poll() is None:
                os.kill(self.holder.pid, signal.SIGKILL)
                self.holder.wait(timeout=30)
            for mount in reversed(mounts_under(self.root)):
                subprocess.run(["umount", "-l", mount], check=False)
            shutil.rmtree(self.root, ignore_errors=True)

    @contextlib.contextmanager
    def client(self, timeout: int = 120) -> Iterator[docker.DockerClient]:
        """A client of the private engine, closed after."""
        c = docker.DockerClient(base_url=self.host, timeout=timeout)
        try:
            yield c
        finally:
            c.close()

    def record_bridges(self) -> None:
        """Remember the bridge names of its networks (``br-<id[:12]>``), for :func:`leaks`."""
        with self.client() as c:
            self.bridges |= {f"br-{n.id[:12]}" for n in c.networks.list() if n.attrs.get("Driver") == "bridge"
                             if n.id}

    def init_swarm(self) -> None:
        """Make it a single-node swarm (on 127.0.0.1 of its own namespace: no port of the host's is taken)."""
        with self.client() as c:
            c.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


# Requests from inside the engine's namespace: GET PATH -> {status, headers}, or the session check
# (one cart item, then GETs with the cookie: each server that answers must see it).
CLIENT = r"""
import json, sys, urllib.request, http.cookiejar
port, what = int(sys.argv[1]), sys.argv[2]
base = f"http://127.0.0.1:{port}"
if what == "session":
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    post = urllib.request.Request(base + "/api/cart", data=b'{"item": 7}', method="POST",
                                  headers={"Content-Type": "application/json"})
    first = json.loads(opener.open(post, timeout=10).read())
    seen = []
    for _ in range(int(sys.argv[3])):
        with opener.open(base + "/api/cart", timeout=10) as resp:
            seen.append({"items": json.loads(resp.read())["items"], "instance": resp.headers["X-Instance"],
                         "version": resp.headers["X-App-Version"], "session": resp.headers["X-Session-State"]})
    print(json.dumps({"first": first["items"], "seen": seen}))
else:
    with urllib.request.urlopen(base + what, timeout=10) as resp:
        print(json.dumps({"status": resp.status, "headers": dict(resp.headers)}))
"""


started: list[subprocess.Popen[str]] = []  # PrivateCli.start's commands, for the fixtures' teardown


@dataclass
class PrivateCli(Cli):
    """``python -m sandbox`` for one project on the private engine, in its network namespace."""

    engine: PrivateEngine | None = None

    def _env(self) -> dict[str, str]:
        assert self.engine is not None
        return {**os.environ, "PYTHONUNBUFFERED": "1", "DOCKER_HOST": self.engine.host}

    def _cmd(self, *args: str) -> list[str]:
        assert self.engine is not None
        return self.engine.wrap([sys.executable, "-m", "sandbox", *args, "--project", self.project])

    def run(self, *args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._cmd(*args), cwd=REPO, env=self._env(), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"sandbox {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The command in the background (ended by the fixture's teardown if a test fails first)."""
        started.append(subprocess.Popen(self._cmd(*args), cwd=REPO, env=self._env(), stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
        return started[-1]

    def client(self, *args: str) -> dict[str, Any]:
        assert self.engine is not None
        proc = subprocess.run(self.engine.wrap([sys.executable, "-c", CLIENT, str(self.port), *args]),
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def get(self, path: str = "/") -> tuple[int, dict[str, str], bytes]:
        answer = self.client(path)
        return int(answer["status"]), dict(answer["headers"]), b""


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, in the order they were mounted."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


@contextlib.contextmanager
def private_engine(shared: docker.DockerClient, images: Sequence[str]) -> Iterator[PrivateEngine]:
    """A started private engine holding ``images`` (saved from ``shared``); ended and removed after."""
    engine = PrivateEngine(root=Path(tempfile.mkdtemp(prefix="rs-engine-", dir="/tmp")))
    try:
        engine.start()
        load_images(shared, engine, images)
        yield engine
    finally:
        engine.close()


def load_images(shared: docker.DockerClient, engine: PrivateEngine, refs: Sequence[str]) -> None:
    """``docker save`` of ``refs`` from the shared engine, ``docker load`` into the private one (one
    archive: the layers they share are copied once)."""
    archive = engine.root / "images.tar"
    with archive.open("wb") as out:
        for chunk in shared.api.get(shared.api._url("/images/get"), params={"names": list(refs)},
                                    stream=True).iter_content(1 << 20):
            out.write(chunk)
    try:
        with engine.client(timeout=600) as c, archive.open("rb") as data:
            c.images.load(data)  # reads the engine's answer to the end: every image is in
            tags = {t for image in c.images.list() for t in image.tags}
        missing = [ref for ref in refs if ref not in tags]
        assert not missing, f"not loaded into the private engine: {missing}"
    finally:
        archive.unlink()


# -- the host's network, which the private engine must leave exactly as it was ------------------------
_CHURN = re.compile(r"\bbr-[0-9a-f]{12}\b|/32\b")  # lines of the shared engine's own networks and containers


def host_network(shared: docker.DockerClient) -> dict[str, Any]:
    """What of the host's network a second engine could break: ``docker0`` (index, address, MTU,
    addresses), the filter and nat tables, and the shared engine's default networks. Rules naming one
    of the shared engine's user-defined bridges or one container address are left out: the other
    fleets on the shared engine add and remove them all the time."""
    link = json.loads(subprocess.run(["ip", "-j", "addr", "show", "docker0"], capture_output=True, text=True,
                                     check=False).stdout or "[]")
    docker0 = [{k: d.get(k) for k in ("ifindex", "ifname", "address", "mtu", "link_type")}
               | {"addr": sorted((a["local"], a["prefixlen"]) for a in d.get("addr_info", []))} for d in link]
    tables = {t: [ln for ln in subprocess.run(["iptables", "-t", t, "-S"], capture_output=True, text=True,
                                              check=True).stdout.splitlines() if not _CHURN.search(ln)]
              for t in ("filter", "nat")}
    defaults = {n.name: n.id for n in shared.networks.list(names=["bridge", "host", "none"])}
    return {"docker0": docker0, "iptables": tables, "networks": defaults}


def leaks(engine: PrivateEngine) -> list[str]:
    """Anything of the private engine found in the host's network namespace: a link named after one of
    its bridges, or a rule naming its address pool or its bridges."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    rules = "\n".join(subprocess.run(["iptables", "-t", t, "-S"], capture_output=True, text=True, check=True).stdout
                      for t in ("filter", "nat"))
    found = [f"link {b}" for b in engine.bridges if re.search(rf"\b{b}\b", links)]
    found += [f"rule {ln}" for ln in rules.splitlines()
              if POOL_PREFIX in ln or any(b in ln for b in engine.bridges)]
    return found
