"""Doctor's experiments, on a fleet of its own: real containers of your image behind the project's NGINX.

:class:`Lab` boots servers (timing each boot to ready), attaches and detaches them, signals them
and reads PID 1 and memory through the engine; :class:`Traffic` is a closed loop of aiohttp GETs
recording every request's start, end and outcome. Each experiment function returns the plain
numbers of :mod:`sandbox.doctor.measure`; :func:`run_experiments` runs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from sandbox.doctor.measure import (
    Capacity,
    Failure,
    KeepAlive,
    LagTrial,
    LongLived,
    LongLivedKind,
    LongLivedOutcome,
    Measurements,
    Readiness,
    StopRun,
    next_lag,
)
from sandbox.errors import ReadinessError
from sandbox.fleet.engine import Engine, Instance
from sandbox.fleet.images import ImageSet
from sandbox.fleet.loadbalancer import LoadBalancer, Upstream
from sandbox.fleet.probes import Probe
from sandbox.rollout.executor import ready_once

log = logging.getLogger("sandbox.doctor")

WORKERS = 8  # clients sending at once in each experiment
POLL_S = 0.05  # readiness checks this often: "ready" is known to 50 ms
WARM_S = 1.0  # load before the instant an experiment studies
AFTER_S = 1.0  # and after the LB detached the server
READY_WATCH_S = 20.0  # readiness: watch a new server at most this long
READY_CLEAN_S = 2.0  # ... and until this long with nothing failing
CAPACITY_S = 3.0  # the closed loop that measures one server's throughput
CAPACITY_WORKERS = 16
RACE_BURST = 8  # requests at once in each round of the keep-alive race
RACE_OFFSETS_S = (-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03)  # around the app's idle timeout
LONG_LIVED_WATCH_S = 0.5  # after the server exited, how long a long-lived connection may take to report


class DoctorEngine(Engine, Protocol):
    """What doctor asks of the engine beyond running a fleet (DockerEngine has it)."""

    async def signal_app(self, instance: Instance) -> str | None: ...

    async def wait_exit(self, instance: Instance, timeout_s: float) -> int | None: ...

    async def pid1_command(self, instance: Instance) -> str: ...

    async def memory_bytes(self, instance: Instance) -> int | None: ...


@dataclass(frozen=True)
class Sent:
    """One request: monotonic start and end, whether it was answered (status below 500), and how."""

    started: float
    ended: float
    ok: bool
    what: str


class Traffic:
    """A closed loop of GETs from ``workers`` clients to ``base`` + each of ``paths`` in turn, until stopped."""

    def __init__(self, base: str, paths: Sequence[str], workers: int = WORKERS, timeout_s: float = 30.0) -> None:
        self.base, self.paths, self.workers = base, list(paths), workers
        self.rows: list[Sent] = []
        self._stop = asyncio.Event()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        self._session = aiohttp.ClientSession(timeout=self._timeout,
                                              connector=aiohttp.TCPConnector(limit=self.workers))
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()

    def stop(self) -> None:
        """Send nothing new; requests in flight go on."""
        self._stop.set()

    async def finish(self) -> None:
        """Stop, wait for the requests in flight, close the connections."""
        self.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _worker(self, n: int) -> None:
        turn = n
        while not self._stop.is_set():
            self.rows.append(await get(self._session_now(), self.base, self.paths[turn % len(self.paths)]))
            turn += 1

    def _session_now(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Traffic used outside 'async with'"
        return self._session


async def get(session: aiohttp.ClientSession, base: str, path: str) -> Sent:
    """One GET, recorded; never raises for the server's or the network's faults."""
    started = time.monotonic()
    try:
        async with session.get(base + path) as resp:
            await resp.read()
            return Sent(started, time.monotonic(), resp.status < 500, f"GET {path} -> {resp.status}")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return Sent(started, time.monotonic(), False, f"GET {path} -> {type(exc).__name__}")


def failures_after(rows: Sequence[Sent], t0: float) -> list[Failure]:
    """The failed requests that ended after ``t0``, as seconds after it, in order."""
    return [Failure(round(r.ended - t0, 3), r.what) for r in sorted(rows, key=lambda r: r.ended)
            if not r.ok and r.ended >= t0]


@dataclass
class Lab:
    """The doctor's fleet: its engine, load balancer, image and contract; the servers it boots."""

    runtime: DoctorEngine
    balancer: LoadBalancer
    images: ImageSet
    version: str
    env: dict[str, str]
    paths: list[str]
    ready_timeout_s: float
    base: Instance  # the server `up` started, attached throughout
    boots_s: list[float] = field(default_factory=list)
    longest_s: float = 0.0  # the longest successful request seen in any experiment
    _slot: int = 100

    @property
    def stop_timeout_s(self) -> float:
        return self.images.spec.stop_timeout

    def seen(self, rows: Sequence[Sent]) -> None:
        """Note the longest answered request of ``rows``."""
        self.longest_s = max([self.longest_s, *(r.ended - r.started for r in rows if r.ok)])

    async def boot(self) -> Instance:
        """Start a server and wait for its readiness check to pass; the boot time is recorded."""
        self._slot += 1
        image = self.images.app[self.version]
        born = time.monotonic()
        inst = await self.runtime.start_app(self.balancer.project, self._slot, self.version, image, dict(self.env),
                                            spec=self.images.spec, toy=self.images.toy)
        last_check = born
        async with Probe() as probe:
            while not (inst.probe_address and await ready_once(probe, self.runtime, self.images, inst, self.version)):
                now = time.monotonic()
                if now - born > self.ready_timeout_s:
                    raise ReadinessError(f"{inst.name} was not ready within {self.ready_timeout_s:g} s "
                                         f"({await self.runtime.exit_info(inst)})")
                if now - last_check > 1.0:
                    last_check = now
                    fresh = await self.runtime.refresh(self.balancer.project, inst)
                    if fresh is None or fresh.state in ("exited", "dead"):
                        raise ReadinessError(f"{inst.name} stopped before it was ready: "
                                             f"{await self.runtime.exit_info(inst)}")
                    inst = fresh
                await asyncio.sleep(POLL_S)
        self.boots_s.append(round(time.monotonic() - born, 3))
        return inst

    async def attach(self, *insts: Instance) -> None:
        await self.balancer.apply([*self.balancer.state.upstreams, *(_upstream(i) for i in insts)])

    async def detach(self, inst: Instance) -> None:
        await self.balancer.apply([u for u in self.balancer.state.upstreams if u.name != inst.name])

    def direct(self, inst: Instance) -> str:
        return f"http://{inst.probe_address}"


def _upstream(inst: Instance) -> Upstream:
    assert inst.address is not None, f"{inst.name} has no address"
    return Upstream(name=inst.name, address=inst.address, version=inst.version)


# -- the experiments ------------------------------------------------------------------------------
async def stop_run(lab: Lab, long_paths: Sequence[tuple[LongLivedKind, str]]) -> tuple[StopRun, list[LongLived], str]:
    """The stop signal to a detached server with requests in flight (and long-lived connections
    open, one per ``(kind, path)``); also PID 1's command line."""
    inst = await lab.boot()
    pid1 = await lab.runtime.pid1_command(inst)
    watchers = [LongLivedWatch(kind, path, lab.direct(inst)) for kind, path in long_paths]
    for w in watchers:
        await w.open()
    async with Traffic(lab.direct(inst), lab.paths) as traffic:
        await asyncio.sleep(WARM_S)
        traffic.stop()
        t0 = time.monotonic()
        signal = await lab.runtime.signal_app(inst) or "the stop signal"
        code = await lab.runtime.wait_exit(inst, lab.stop_timeout_s)
        exit_s = round(time.monotonic() - t0, 3) if code is not None else None
        await lab.runtime.kill_app(inst)  # SIGKILL at the stop timeout, as every engine does
    lab.seen(traffic.rows)
    in_flight = [r for r in traffic.rows if r.started < t0 <= r.ended]
    long_lived = [await w.outcome(t0, exited=exit_s is not None) for w in watchers]
    return (StopRun(signal=signal, in_flight=len(in_flight), finished=sum(r.ok for r in in_flight),
                    failures=failures_after([r for r in in_flight if not r.ok], t0), exit_s=exit_s, exit_code=code),
            long_lived, pid1)


async def lag_trial(lab: Lab, lag_s: float) -> LagTrial:
    """Under load through the LB, signal a fresh attached server ``lag_s`` before the LB detaches it."""
    inst = await lab.boot()
    await lab.attach(inst)
    try:
        async with Traffic(lab.balancer.url, lab.paths) as traffic:
            await asyncio.sleep(WARM_S)
            t0 = time.monotonic()
            await lab.runtime.signal_app(inst)
            await asyncio.sleep(lag_s)
            await lab.detach(inst)
            await asyncio.sleep(AFTER_S)
    finally:
        if any(u.name == inst.name for u in lab.balancer.state.upstreams):
            await lab.detach(inst)
        await lab.runtime.kill_app(inst)
    lab.seen(traffic.rows)
    return LagTrial(lag_s=lag_s, sent=sum(r.ended >= t0 for r in traffic.rows),
                    failures=failures_after(traffic.rows, t0))


async def lag_trials(lab: Lab, say: Callable[[str], None]) -> list[LagTrial]:
    """Bisect the lag the app survives (``measure.next_lag`` picks each)."""
    trials: list[LagTrial] = []
    while (lag := next_lag(trials)) is not None:
        trials.append(await lag_trial(lab, lag))
        say(f"doctor: endpoint lag {lag:g} s: {len(trials[-1].failures)} of {trials[-1].sent} dropped")
    return trials


async def readiness_run(lab: Lab) -> tuple[Readiness, Instance]:
    """Real requests straight to a new server from the instant its readiness check first passes;
    the server is left running for the capacity experiment."""
    inst = await lab.boot()
    t0 = time.monotonic()
    async with Traffic(lab.direct(inst), lab.paths, workers=4) as traffic:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            failed = [r.ended for r in traffic.rows if not r.ok]
            if now - t0 > READY_WATCH_S or (now - max(failed, default=t0) > READY_CLEAN_S and now - t0 > 1.0):
                break
    lab.seen(traffic.rows)
    failures = failures_after(traffic.rows, t0)
    last_failed = max((r.ended for r in traffic.rows if not r.ok), default=None)
    serves = 0.0 if last_failed is None else min(
        (r.ended for r in traffic.rows if r.ok and r.started >= last_failed), default=time.monotonic()) - t0
    return Readiness(ready_s=lab.boots_s[-1], sent=len(traffic.rows), failures=failures,
                     serves_after_s=round(max(0.0, serves), 3)), inst


async def idle_timeout(address: str, path: str, limit_s: float) -> float | None:
    """Seconds the server keeps an idle HTTP/1.1 keep-alive connection open after answering;
    None when it still is after ``limit_s``."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode())
        await writer.drain()
        last = time.monotonic()
        while True:  # the answer: until a pause (its end) or the server closes
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.3)
            except TimeoutError:
                break
            if not chunk:
                return round(time.monotonic() - last, 3)
            last = time.monotonic()
        try:
            await asyncio.wait_for(reader.read(), limit_s)
        except TimeoutError:
            return None
        return round(time.monotonic() - last, 3)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def race(url: str, path: str, idle_s: float) -> tuple[int, list[Failure]]:
    """Bursts through the LB, each after the app's idle timeout give or take a few ms: an upstream
    connection NGINX reuses as the app closes it fails. (requests sent, failures)."""
    sent: list[Sent] = []
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for offset in RACE_OFFSETS_S:
            await asyncio.gather(*(get(session, url, path) for _ in range(RACE_BURST)))
            await asyncio.sleep(max(0.0, idle_s + offset))
            sent += await asyncio.gather(*(get(session, url, path) for _ in range(RACE_BURST)))
    return len(sent), failures_after(sent, t0)


async def keepalive_run(lab: Lab, app_idle: float | None) -> KeepAlive:
    """The app's idle timeout (``app_idle``) against the LB's; when shorter, the race with and
    without the fix (the LB's upstream keep-alive set below the app's)."""
    lb_idle = float(lab.balancer.state.upstream_keepalive_s)
    if app_idle is None or app_idle > lb_idle:
        return KeepAlive(app_idle_s=app_idle, lb_idle_s=lb_idle)
    path = lab.paths[0]
    race_sent, race_failures = await race(lab.balancer.url, path, app_idle)
    await lab.balancer.apply(list(lab.balancer.state.upstreams), upstream_keepalive_s=max(1, math.floor(app_idle) - 1))
    try:
        fixed_sent, fixed_failures = await race(lab.balancer.url, path, app_idle)
    finally:
        await lab.balancer.apply(list(lab.balancer.state.upstreams), upstream_keepalive_s=int(lb_idle))
    return KeepAlive(app_idle_s=app_idle, lb_idle_s=lb_idle, race_sent=race_sent, race_failures=race_failures,
                     fixed_sent=fixed_sent, fixed_failures=fixed_failures)


async def capacity_run(lab: Lab, inst: Instance, offered_rps: float, size: int) -> Capacity:
    """Idle and loaded memory and one server's throughput in a closed loop straight to it."""
    idle = await lab.runtime.memory_bytes(inst)
    async with Traffic(lab.direct(inst), lab.paths, workers=CAPACITY_WORKERS) as traffic:
        await asyncio.sleep(CAPACITY_S / 2)
        loaded = await lab.runtime.memory_bytes(inst)
        await asyncio.sleep(CAPACITY_S / 2)
        traffic.stop()
    await lab.runtime.kill_app(inst)
    lab.seen(traffic.rows)
    ok = sorted(r.ended - r.started for r in traffic.rows if r.ok)
    p99 = ok[min(len(ok) - 1, math.ceil(0.99 * len(ok)) - 1)] * 1000 if ok else 0.0
    return Capacity(boots_s=list(lab.boots_s), idle_mib=_mib(idle), loaded_mib=_mib(loaded),
                    limit_mib=_mib(memory_limit_bytes(lab.images.spec.memory)), rps=len(ok) / CAPACITY_S,
                    p99_ms=p99, offered_rps=offered_rps, size=size)


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def memory_limit_bytes(text: str) -> int | None:
    """Docker's memory limit text (``128m``, ``1g``, ``512000``) in bytes; None when unreadable."""
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    scale = units.get(text[-1:], 0) if text[-1:].isalpha() else 1
    number = text[:-1] if text[-1:].isalpha() else text
    try:
        return int(float(number) * scale) or None
    except ValueError:
        return None


# -- long-lived connections -------------------------------------------------------------------------
class LongLivedWatch:
    """A WebSocket or SSE connection to one server, read until it closes, is cut, or the watch ends."""

    def __init__(self, kind: LongLivedKind, path: str, base: str) -> None:
        self.kind, self.path, self.base = kind, path, base
        self.ended_at: float | None = None
        self.close_code: int | None = None
        self.clean = False
        self.opened = False
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=5))
        try:
            if self.kind == "ws":
                ws = await self._session.ws_connect(self.base.replace("http", "ws", 1) + self.path, autoping=True)
                self._task = asyncio.create_task(self._read_ws(ws))
            else:
                resp = await self._session.get(self.base + self.path, headers={"Accept": "text/event-stream"})
                if resp.status >= 300:
                    return
                self._task = asyncio.create_task(self._read_sse(resp))
            self.opened = True
        except (aiohttp.ClientError, OSError) as exc:
            log.info("doctor: %s %s did not open: %s", self.kind, self.path, exc)

    async def _read_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _msg in ws:
            pass
        self.ended_at = time.monotonic()
        self.close_code = ws.close_code
        self.clean = ws.close_code is not None and ws.close_code != 1006

    async def _read_sse(self, resp: aiohttp.ClientResponse) -> None:
        try:
            async for _line in resp.content:
                pass
            self.clean = True
        except (aiohttp.ClientError, OSError):
            self.clean = False
        self.ended_at = time.monotonic()

    async def outcome(self, t0: float, *, exited: bool) -> LongLived:
        """How it ended relative to the signal at ``t0``; ``exited``: the server exited by itself."""
        try:
            if self._task is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), LONG_LIVED_WATCH_S)
        finally:
            if self._task is not None:
                self._task.cancel()
            if self._session is not None:
                await self._session.close()
        if not self.opened:
            return LongLived(self.kind, self.path, "refused", None, None)
        after = None if self.ended_at is None else round(self.ended_at - t0, 3)
        outcome: LongLivedOutcome = "closed" if self.clean else (
            "cut" if exited or self.ended_at is not None else "open")
        return LongLived(self.kind, self.path, outcome, self.close_code, after)


# -- all of them ------------------------------------------------------------------------------------
async def run_experiments(lab: Lab, *, long_paths: Sequence[tuple[LongLivedKind, str]], offered_rps: float, size: int,
                          say: Callable[[str], None]) -> Measurements:
    """Every experiment in turn; the app's idle timeout is measured alongside them (it only waits),
    the keep-alive race last, when nothing else goes through the LB."""
    started = time.monotonic()
    spec = lab.images.spec
    address = lab.base.probe_address
    assert address is not None
    idle = asyncio.create_task(idle_timeout(address, lab.paths[0], lab.balancer.state.upstream_keepalive_s + 1))
    try:
        say("doctor: stop signal to a detached server with requests in flight")
        stop, long_lived, pid1 = await stop_run(lab, long_paths)
        say("doctor: endpoint-removal lag (the signal before the LB detaches), by bisection")
        lag = await lag_trials(lab, say)
        say("doctor: readiness honesty")
        ready, fresh = await readiness_run(lab)
        say("doctor: capacity")
        cap = await capacity_run(lab, fresh, offered_rps, size)
        say("doctor: idle keep-alive")
        keepalive = await keepalive_run(lab, await idle)
    finally:
        idle.cancel()
    return Measurements(stop_signal=stop.signal, stop_timeout_s=spec.stop_timeout, health_path=spec.health_path
                        or ("/healthz" if lab.images.toy else ""), app_port=spec.port, pid1=pid1, stop=stop, lag=lag,
                        readiness=ready, keepalive=keepalive, longest_request_s=lab.longest_s, long_lived=long_lived,
                        capacity=cap, took_s=round(time.monotonic() - started, 1))
