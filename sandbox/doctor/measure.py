"""What doctor's experiments measured: plain numbers and the requests that failed, nothing judged.

Every time is in seconds from the experiment's own instant (the stop signal, the first passing
readiness check), so a finding can say "3 requests failed, 0.4-1.1 s after SIGTERM".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: The endpoint-removal lag doctor rehearses at most: Kubernetes usually takes the endpoint out of
#: every proxy within a few seconds of sending SIGTERM; a server that keeps serving this long needs
#: no preStop sleep.
MAX_LAG_S = 5.0
#: An app that survives less lag than this drops requests wherever endpoints take a second to go.
MIN_LAG_S = 1.0
LAG_STEP_S = 0.5  # the bisection stops when it knows the lag to this
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "busybox"})


@dataclass(frozen=True)
class Failure:
    """One request that failed: when (seconds after the experiment's instant) and how."""

    at_s: float
    what: str  # "GET / -> 502", "GET / -> ServerDisconnectedError"

    def __str__(self) -> str:
        return f"{self.what} at +{self.at_s:.2f} s"


@dataclass(frozen=True)
class StopRun:
    """The stop signal sent to one detached server with requests in flight."""

    signal: str
    in_flight: int  # requests started before the signal and not yet answered
    finished: int  # of those, answered with a status below 500
    failures: list[Failure]  # of those, the ones that failed
    exit_s: float | None  # signal to exit; None: still running at --stop-timeout (then killed)
    exit_code: int | None


@dataclass(frozen=True)
class LagTrial:
    """One rehearsal of the endpoint-removal lag: the stop signal ``lag_s`` before the LB detaches."""

    lag_s: float
    sent: int
    failures: list[Failure]


@dataclass(frozen=True)
class Readiness:
    """A new server's first seconds after its readiness check first passed, real requests straight to it."""

    ready_s: float  # container start to the first passing check
    sent: int
    failures: list[Failure]
    serves_after_s: float  # from "ready" to the first answer after which none failed (0: at once)


@dataclass(frozen=True)
class KeepAlive:
    """The app's idle keep-alive timeout against the LB's upstream one, and the race provoked."""

    app_idle_s: float | None  # None: the app kept the idle connection open past lb_idle_s
    lb_idle_s: float
    race_sent: int = 0
    race_failures: list[Failure] = field(default_factory=list)
    fixed_sent: int = 0  # the same race with the LB's upstream keep-alive below the app's
    fixed_failures: list[Failure] = field(default_factory=list)


LongLivedKind = Literal["ws", "sse"]
LongLivedOutcome = Literal["closed", "cut", "open", "refused"]


@dataclass(frozen=True)
class LongLived:
    """A WebSocket or SSE connection held open across a stop signal."""

    kind: LongLivedKind
    path: str
    outcome: LongLivedOutcome  # closed: a close frame / the stream's end; cut: neither; open: still at exit
    close_code: int | None  # the WebSocket close code, if a frame came
    after_s: float | None  # signal to the close or cut


@dataclass(frozen=True)
class Capacity:
    """Boots, memory and throughput of single servers."""

    boots_s: list[float]  # container start to ready, each boot doctor did
    idle_mib: float | None
    loaded_mib: float | None
    limit_mib: float | None  # --memory
    rps: float  # answers per second one server gave under a closed loop
    p99_ms: float
    offered_rps: float  # the rehearsed load (--users and --think-ms) as requests per second
    size: int  # the fleet doctor plans for (--size)

    @property
    def boot_p50_s(self) -> float:
        ordered = sorted(self.boots_s)
        return ordered[len(ordered) // 2] if ordered else 0.0

    @property
    def boot_max_s(self) -> float:
        return max(self.boots_s, default=0.0)


@dataclass(frozen=True)
class LocustfileRun:
    """Your locustfile run against doctor's fleet (``--locustfile``): what its requests took."""

    locustfile: str
    seconds: float
    requests: int  # ended within the run (those the stop cut short are left out)
    failed: int  # of those, not answered below 400
    longest_s: float  # the longest answered request
    longest_name: str  # its Locust name (method and path)


@dataclass(frozen=True)
class Measurements:
    """Everything one doctor run measured, with the contract it ran under."""

    stop_signal: str
    stop_timeout_s: float
    health_path: str
    app_port: int
    pid1: str
    stop: StopRun
    lag: list[LagTrial]
    readiness: Readiness
    keepalive: KeepAlive
    longest_request_s: float
    long_lived: list[LongLived]
    capacity: Capacity
    took_s: float = 0.0
    locustfile: LocustfileRun | None = None  # with --locustfile: its requests count in longest_request_s

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def shell_pid1(command: str) -> bool:
    """Whether PID 1 is a shell running a command string (``/bin/sh -c "..."``): it does not pass
    signals on to the app it started."""
    words = command.split()
    return bool(words) and words[0].rsplit("/", 1)[-1] in SHELLS and "-c" in words[1:3]


def tolerated_lag(trials: list[LagTrial]) -> float | None:
    """The longest lag rehearsed with nothing dropped, below the shortest that dropped; None when
    every lag dropped (or none was rehearsed)."""
    dropped = [t.lag_s for t in trials if t.failures]
    ceiling = min(dropped, default=math.inf)
    clean = [t.lag_s for t in trials if not t.failures and t.lag_s < ceiling]
    return max(clean, default=None)


def next_lag(trials: list[LagTrial]) -> float | None:
    """The next lag to rehearse, or None when the answer is known to ``LAG_STEP_S``: first the
    longest (nothing dropped: the app needs no delay), then none at all (something dropped: it
    cuts even what is in flight), then halves between the longest clean lag and the shortest that dropped."""
    done = {t.lag_s: bool(t.failures) for t in trials}
    if MAX_LAG_S not in done:
        return MAX_LAG_S
    if not done[MAX_LAG_S]:
        return None
    if 0.0 not in done:
        return 0.0
    if done[0.0]:
        return None
    low = tolerated_lag(trials) or 0.0
    high = min(lag for lag, failed in done.items() if failed)
    middle = round((low + high) / 2 / LAG_STEP_S) * LAG_STEP_S
    return middle if high - low > LAG_STEP_S and low < middle < high else None
