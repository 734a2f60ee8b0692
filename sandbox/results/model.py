"""One run's report as typed objects: what was measured, the rollout record, the verdict.

:class:`Report` is what every output renders (terminal, ``report.json``, ``report.md``, the
chart, JUnit, the dashboard). Plain dicts (:data:`Json`) appear only at the JSON edge:
:meth:`Report.to_json` writes the ``report.json`` shape and :meth:`Report.from_json` reads it
back. Each :class:`Check` knows how to show its own figure and limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from sandbox.rollout import strategies

Status = Literal["PASS", "FAIL", "SKIP", "NOT_RUN"]
Json = dict[str, Any]
"""A JSON object, as ``report.json`` holds it: the only untyped shape here."""


def num(value: Any, unit: str = "", digits: int = 1) -> str:
    """A number for people: "-" when unknown, ints plain, floats to ``digits``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = str(value) if isinstance(value, int) else f"{value:.{digits}f}"
    return f"{text}{unit}"


def opt_float(value: Any) -> float | None:
    """``value`` as a float, None staying None."""
    return None if value is None else float(value)


def opt_int(value: Any) -> int | None:
    """``value`` as an int, None staying None."""
    return None if value is None else int(value)


# --------------------------------------------------------------------------- measured figures


@dataclass(frozen=True)
class Requests:
    """Every request the load generator started, by how it ended."""

    total: int = 0
    ok: int = 0
    dropped: int = 0
    errors_4xx: int = 0
    unanswered: int = 0
    slow: int = 0
    retried: int = 0
    not_found: int = 0  # 404 and 410 answers from the rollout's start on: an endpoint one version lacks
    by_version: Mapping[str, int] = field(default_factory=dict)
    dropped_first: tuple[Dropped, ...] = ()  # the first few dropped requests, as the users saw them

    def to_json(self) -> Json:
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _REQUEST_LISTS}
        return {**counts, "by_version": dict(self.by_version),
                "dropped_first": [d.to_json() for d in self.dropped_first]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Requests:
        counts = {f.name: int(data.get(f.name) or 0) for f in fields(cls) if f.name not in _REQUEST_LISTS}
        return cls(**counts, by_version={str(k): int(v) for k, v in (data.get("by_version") or {}).items()},
                   dropped_first=tuple(Dropped.from_json(d) for d in data.get("dropped_first") or ()))


_REQUEST_LISTS = ("by_version", "dropped_first")


@dataclass(frozen=True)
class Dropped:
    """One dropped request: when it was sent (unix time), what, and how it ended."""

    t: float
    method: str
    path: str
    status: int  # 0: no HTTP answer
    error: str
    instance: str | None  # the server that answered, when one did

    def to_json(self) -> Json:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Dropped:
        return cls(t=float(data.get("t") or 0.0), method=str(data.get("method") or ""),
                   path=str(data.get("path") or ""), status=int(data.get("status") or 0),
                   error=str(data.get("error") or ""),
                   instance=str(data["instance"]) if data.get("instance") else None)

    def describe(self, t0: float | None) -> str:
        """``+3.4 s POST /api/cart: HTTPConnectionClosed`` (seconds after ``t0`` when known)."""
        when = f"+{self.t - t0:.1f} s " if t0 is not None else ""
        how = self.error or (f"HTTP {self.status}" if self.status else "no answer")
        if self.status and self.error and str(self.status) not in self.error:
            how = f"HTTP {self.status} {self.error}"
        return f"{when}{self.method} {self.path}: {how}" + (f" (from {self.instance})" if self.instance else "")


@dataclass(frozen=True)
class Latency:
    """Nearest-rank percentiles in ms of answered requests; ``max`` only for the whole run."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    def to_json(self, *, with_max: bool = True) -> Json:
        out = {"p50": self.p50, "p95": self.p95, "p99": self.p99}
        return {**out, "max": self.max} if with_max else out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Latency:
        return cls(*(opt_float(data.get(k)) for k in ("p50", "p95", "p99", "max")))


@dataclass(frozen=True)
class Phase:
    """Warmup, rollout or cooldown (or "all" when no rollout began)."""

    duration_s: float = 0.0
    requests: int = 0
    rps: float = 0.0
    dropped: int = 0
    errors_4xx: int = 0
    latency: Latency = Latency()

    def to_json(self) -> Json:
        return {"duration_s": self.duration_s, "requests": self.requests, "rps": self.rps, "dropped": self.dropped,
                "errors_4xx": self.errors_4xx, "latency_ms": self.latency.to_json(with_max=False)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Phase:
        return cls(float(data.get("duration_s") or 0.0), int(data.get("requests") or 0), float(data.get("rps") or 0.0),
                   int(data.get("dropped") or 0), int(data.get("errors_4xx") or 0),
                   Latency.from_json(data.get("latency_ms") or {}))


@dataclass(frozen=True)
class LatencySample:
    """The p99 of one phase over the requests compared, and how many answers it rests on."""

    p99_ms: float | None = None
    samples: int = 0

    def to_json(self) -> Json:
        return {"p99_ms": self.p99_ms, "samples": self.samples}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencySample:
        return cls(opt_float(data.get("p99_ms")), int(data.get("samples") or 0))


@dataclass(frozen=True)
class LikeForLike:
    """Steady (warmup) and rollout latency over the same request classes (method and path) and
    the same users, so the p99 check compares like with like; ``classes`` is how many classes."""

    steady: LatencySample = LatencySample()
    rollout: LatencySample = LatencySample()
    classes: int = 0

    def to_json(self) -> Json:
        return {"steady": self.steady.to_json(), "rollout": self.rollout.to_json(), "classes": self.classes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LikeForLike:
        return cls(LatencySample.from_json(data.get("steady") or {}),
                   LatencySample.from_json(data.get("rollout") or {}), int(data.get("classes") or 0))


@dataclass(frozen=True)
class Second:
    """One second of the load: successful answers per version, drops sent, p99 of answers."""

    t: int
    answers: Mapping[str, int]
    dropped: int = 0
    p99_ms: float | None = None
    # long-lived connections (--ws-users/--sse-users) open at the second's end, per handshake version
    # (empty: none ran; in the JSON only then absent)
    long_lived_open: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> Json:
        out: Json = {"t": self.t, **self.answers, "dropped": self.dropped, "p99_ms": self.p99_ms}
        if self.long_lived_open:
            out["long_lived_open"] = dict(self.long_lived_open)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Second:
        answers = {str(k): int(v) for k, v in data.items() if k not in ("t", "dropped", "p99_ms", "long_lived_open")}
        open_now = {str(k): int(v) for k, v in (data.get("long_lived_open") or {}).items()}
        return cls(int(data["t"]), answers, int(data.get("dropped") or 0), opt_float(data.get("p99_ms")), open_now)


@dataclass(frozen=True)
class Span:
    """A stretch of time: absolute unix ``start``/``end`` and its length."""

    start: float
    end: float
    duration_s: float

    def to_json(self) -> Json:
        return {"start": self.start, "end": self.end, "duration_s": self.duration_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Span | None:
        if not data or data.get("start") is None:
            return None
        return cls(float(data["start"]), float(data["end"]), float(data["duration_s"]))


_EXPOSURE_INTS = ("users_total", "users_saw_both", "users_exposed", "requests_exposed", "users_hit", "downgrades",
                  "users_downgraded", "version_flips", "contract_violations", "sessions_lost",
                  "requests_routed", "users_failed")
_EXPOSURE_FLOATS = ("mixed_window_s", "users_saw_both_share", "mixed_fleet_s", "users_exposed_share",
                    "requests_exposed_share", "users_failed_share")


@dataclass(frozen=True)
class Exposure:
    """What the mixed fleet reached (see :func:`sandbox.results.measure.exposure`)."""

    from_version: str | None = None
    to_version: str | None = None
    mixed_window_s: float | None = None
    rollout_window: Span | None = None
    users_total: int = 0
    users_saw_both: int = 0
    users_saw_both_share: float | None = None
    mixed_fleet_s: float | None = None
    users_exposed: int = 0
    users_exposed_share: float | None = None
    requests_exposed: int = 0
    requests_exposed_share: float | None = None
    users_hit: int = 0
    downgrades: int = 0
    users_downgraded: int = 0
    version_flips: int = 0
    contract_violations: int = 0
    sessions_lost: int = 0
    # users who met a failure: a dropped request or an answer that broke their contract (how far a
    # breaking version reached), and their share of all users
    users_failed: int = 0
    users_failed_share: float | None = None
    timeline: tuple[Second, ...] = ()
    # load requests that named their version (header X-Sandbox-Version or cookie sandbox_version, as
    # the LB logged them): sent to that version on purpose, so left out of the crossing figures
    # (users_saw_both, downgrades, users_downgraded, version_flips, mixed_window_s)
    requests_routed: int = 0

    def to_json(self) -> Json:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rollout_window"] = self.rollout_window.to_json() if self.rollout_window else None
        out["timeline"] = [s.to_json() for s in self.timeline]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Exposure:
        figures: Json = {k: int(data.get(k) or 0) for k in _EXPOSURE_INTS}
        figures.update({k: opt_float(data.get(k)) for k in _EXPOSURE_FLOATS})
        return cls(
            from_version=data.get("from_version"), to_version=data.get("to_version"),
            rollout_window=Span.from_json(data.get("rollout_window")),
            timeline=tuple(Second.from_json(s) for s in data.get("timeline") or []),
            **figures,
        )


@dataclass(frozen=True)
class Drain:
    """One drain: the server, how long it took, what was in flight, whether it gave up (or could
    not tell: ``reason`` says why)."""

    instance: str | None
    duration_s: float | None = None
    in_flight: int | None = None
    timed_out: bool = False
    reason: str | None = None
    # dynamic mode, replace: long-lived connections the LB held to it once its requests had drained
    # (None: not counted), the seconds from its stop signal until the LB counted none open, and how
    # many were still open when the wait ended (0 unless it timed out)
    long_lived: int | None = None
    long_lived_close_s: float | None = None
    long_lived_left: int | None = None

    def to_json(self) -> Json:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Drain:
        return cls(data.get("instance"), opt_float(data.get("duration_s")), opt_int(data.get("in_flight")),
                   bool(data.get("timed_out")), data.get("reason"), opt_int(data.get("long_lived")),
                   opt_float(data.get("long_lived_close_s")), opt_int(data.get("long_lived_left")))


@dataclass(frozen=True)
class LongLived:
    """The long-lived connections (WebSocket, event stream) of ``--ws-users`` / ``--sse-users``
    (:func:`sandbox.results.long_lived.long_lived`): how they ended, what they lost, how they came back."""

    users: int = 0  # simulated users that held one
    opened: int = 0  # connections opened (handshake answered), reconnections included
    failed: int = 0  # attempts that never opened (refused, 502...): each is retried after a backoff
    clean_closes: int = 0  # the server said goodbye: a WebSocket close frame 1000/1001/1012/1013, an SSE ``retry:``
    abnormal_closes: int = 0  # no goodbye: WebSocket 1006 (or another code), an event stream cut
    open_at_stop: int = 0  # still open when the load stopped (closed by the client)
    closes: Mapping[str, int] = field(default_factory=dict)  # "ws 1001", "ws 1006", "sse end", "sse cut", ...
    messages: int = 0  # numbered messages received
    messages_lost: int = 0  # numbers missing below the last one a connection received
    messages_duplicated: int = 0  # numbers a connection received twice
    reconnects: int = 0  # connections opened after an earlier one of the same user ended
    reconnect_p50_ms: float | None = None  # from the end of a user's connection to its next one open
    reconnect_p99_ms: float | None = None
    peak_reconnects_per_s: int = 0  # the most reconnections opened within one second (the storm)
    # how widely the storm is spread: p95 - p5 of the reconnect times; a client waiting a uniform
    # random part of the hint before it reconnects gives about 0.9 x the hint, all at once about 0
    reconnect_spread_ms: float | None = None
    reconnect_hint_ms: float | None = None  # the hint the servers' goodbyes gave most often (SSE retry:, retry=N)
    # users whose reconnection landed on a server of another version than their connection before
    # (they ended on the other version mid-session), and those of them who later came back to a
    # version they had left (the old one again: the forward-compatibility risk)
    users_switched: int = 0
    users_switched_back: int = 0

    @property
    def ran(self) -> bool:
        """Whether any long-lived connection was attempted."""
        return bool(self.opened or self.failed)

    def rows(self) -> list[tuple[str, str]]:
        """(what, figure) pairs for people, the terminal's and report.md's alike."""
        closes = ", ".join(f"{code} {n}" for code, n in self.closes.items()) or "-"
        return [
            ("connections", f"{self.opened} opened by {self.users} users, {self.failed} attempts failed"),
            ("closes", f"{self.clean_closes} clean, {self.abnormal_closes} abnormal, {self.open_at_stop} open at "
                       f"stop ({closes})"),
            ("messages", f"{self.messages} received, {self.messages_lost} lost, {self.messages_duplicated} "
                         "duplicated"),
            ("reconnects", f"{self.reconnects}, p50 {num(self.reconnect_p50_ms, ' ms')}, p99 "
                           f"{num(self.reconnect_p99_ms, ' ms')}, peak {self.peak_reconnects_per_s}/s, spread "
                           f"p5-p95 {num(self.reconnect_spread_ms, ' ms')} "
                           f"(hint {num(self.reconnect_hint_ms, ' ms')})"),
            ("versions", f"{self.users_switched} users reconnected to the other version, "
                         f"{self.users_switched_back} of them back again"),
        ]

    def to_json(self) -> Json:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "closes": dict(self.closes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LongLived:
        floats = ("reconnect_p50_ms", "reconnect_p99_ms", "reconnect_spread_ms", "reconnect_hint_ms")
        ints = {f.name: int(data.get(f.name) or 0) for f in fields(cls) if f.name not in ("closes", *floats)}
        return cls(**ints, closes={str(k): int(v) for k, v in (data.get("closes") or {}).items()},
                   reconnect_p50_ms=opt_float(data.get("reconnect_p50_ms")),
                   reconnect_p99_ms=opt_float(data.get("reconnect_p99_ms")),
                   reconnect_spread_ms=opt_float(data.get("reconnect_spread_ms")),
                   reconnect_hint_ms=opt_float(data.get("reconnect_hint_ms")))


@dataclass(frozen=True)
class Figures:
    """Every number measured in one run (:func:`sandbox.results.measure.measure`)."""

    requests: Requests = Requests()
    latency: Latency = Latency()
    stall_s: float | None = None
    stall_at_s: float | None = None
    slow_ms: float | None = None
    exposure: Exposure = Exposure()
    phases: Mapping[str, Phase] = field(default_factory=dict)
    like_for_like: LikeForLike = LikeForLike()
    drains: tuple[Drain, ...] = ()
    window: Span | None = None
    rows_lost: int | None = None  # requests the load generator sent but wrote no row for (None: unknown)
    unrecorded: int | None = None  # load requests in the LB's log with no row (None: the log was not read)
    long_lived: LongLived = LongLived()

    @property
    def drains_timed_out(self) -> int:
        return sum(1 for d in self.drains if d.timed_out)

    def to_json(self) -> Json:
        """The figures' part of ``report.json``."""
        return {
            "requests": self.requests.to_json(),
            "latency_ms": self.latency.to_json(),
            "stall_s": self.stall_s,
            "stall_at_s": self.stall_at_s,
            "slow": self.requests.slow,
            "slow_ms": self.slow_ms,
            "exposure": self.exposure.to_json(),
            "phases": {k: p.to_json() for k, p in self.phases.items()},
            "like_for_like": self.like_for_like.to_json(),
            "drains": [d.to_json() for d in self.drains],
            "window": self.window.to_json() if self.window else {},
            "rows_lost": self.rows_lost,
            "unrecorded": self.unrecorded,
            "long_lived": self.long_lived.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Figures:
        """The figures of a ``report.json`` (missing blocks: nothing measured)."""
        return cls(
            requests=Requests.from_json(data.get("requests") or {}),
            latency=Latency.from_json(data.get("latency_ms") or {}),
            stall_s=opt_float(data.get("stall_s")), stall_at_s=opt_float(data.get("stall_at_s")),
            slow_ms=opt_float(data.get("slow_ms")),
            exposure=Exposure.from_json(data.get("exposure") or {}),
            phases={str(k): Phase.from_json(v) for k, v in (data.get("phases") or {}).items()},
            like_for_like=LikeForLike.from_json(data.get("like_for_like") or {}),
            drains=tuple(Drain.from_json(d) for d in data.get("drains") or []),
            window=Span.from_json(data.get("window")),
            rows_lost=opt_int(data.get("rows_lost")), unrecorded=opt_int(data.get("unrecorded")),
            long_lived=LongLived.from_json(data.get("long_lived") or {}),
        )


_FIGURE_KEYS = frozenset(Figures().to_json())


# --------------------------------------------------------------------------- the rollout record


@dataclass(frozen=True)
class Step:
    """One controller step, ``t`` in seconds since the first step."""

    t: float
    phase: str
    instance: str | None = None
    version: str | None = None
    slot: int | None = None
    batch: int | None = None
    address: str | None = None
    detail: Mapping[str, Any] | None = None
    node: str | None = None  # the Swarm node of the server (several nodes only)

    EXTRA: ClassVar[tuple[str, ...]] = ("version", "slot", "batch", "address", "detail", "node")

    def to_json(self) -> Json:
        out: Json = {"t": self.t, "phase": self.phase, "instance": self.instance}
        out.update({k: getattr(self, k) for k in self.EXTRA if getattr(self, k) is not None})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        return cls(float(data.get("t") or 0.0), str(data.get("phase")), data.get("instance"),
                   **{k: data.get(k) for k in cls.EXTRA})


@dataclass(frozen=True)
class MixedRecord:
    """One ``--mixed-check`` command (or ``--migrate``'s, or a ``--hook``'s): how it ended
    (``passed``, ``failed``, ``timed_out``, ``not_run``)."""

    name: str
    command: str
    status: str
    exit_code: int | None = None
    duration_s: float | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    reason: str | None = None
    attached: Mapping[str, int] | None = None  # servers attached by version when it ran
    batch: int | None = None  # the batch after whose attach it ran
    event: str | None = None  # a --hook's event (pre-rollout, post-batch, post-rollout, on-rollback)

    OPTIONAL: ClassVar[tuple[str, ...]] = ("reason", "attached", "batch", "event")

    def to_json(self) -> Json:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None or k not in self.OPTIONAL}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MixedRecord:
        return cls(str(data.get("name")), str(data.get("command")), str(data.get("status")),
                   opt_int(data.get("exit_code")), opt_float(data.get("duration_s")),
                   str(data.get("stdout_tail") or ""), str(data.get("stderr_tail") or ""), data.get("reason"),
                   data.get("attached"), opt_int(data.get("batch")),
                   str(data["event"]) if data.get("event") is not None else None)

    def summary(self) -> str:
        """One line for people: "FAIL exit 3 in 0.2 s: CMD" or "NOT RUN CMD (why)"."""
        if self.status == "not_run":
            return f"NOT RUN {self.command} ({self.reason})"
        word = {"passed": "PASS", "timed_out": "FAIL (timed out)"}.get(self.status, "FAIL")
        return f"{word} exit {self.exit_code} in {self.duration_s} s: {self.command}"


@dataclass(frozen=True)
class RollbackRehearsal:
    """One rehearsal of a rollback (``--rehearse-rollback``): the old version's image served, off
    the load balancer, against the database as it was ``after`` the rollout (or the contract step),
    under the toy's request mix. ``status``: ``ran``, ``failed`` (the rehearsal itself could not
    run: ``reason`` says why) or ``not_run``. Safe when it ran, answered, and no answer was an
    error (a 4xx or 5xx, or no answer at all)."""

    after: str  # "rollout" or "contract"
    version: str  # the old version, whose image was served
    status: str
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    duration_s: float | None = None
    reason: str | None = None

    @property
    def safe(self) -> bool | None:
        """True (a rollback would work), False (it would not), None (not known: it did not run)."""
        if self.status != "ran" or self.requests == 0:
            return None
        return self.errors == 0

    @property
    def answer(self) -> str:
        """``yes``, ``no`` or ``unknown``: what ``rollback_safe`` says."""
        safe = self.safe
        return "unknown" if safe is None else "yes" if safe else "no"

    def line(self) -> str:
        """"after the contract: v1 against the schema: 212 requests, 97 errors: rollback safe: no (first: ...)"."""
        head = f"after the {self.after}: {self.version} against the schema"
        if self.status != "ran":
            return f"{head}: {self.status.replace('_', ' ')} ({self.reason}): rollback safe: unknown"
        text = f"{head}: {self.requests} requests, {self.errors} errors: rollback safe: {self.answer}"
        return f"{text} (first: {self.first_error})" if self.first_error else text

    def to_json(self) -> Json:
        return {"after": self.after, "version": self.version, "status": self.status, "requests": self.requests,
                "errors": self.errors, "first_error": self.first_error, "duration_s": self.duration_s,
                "reason": self.reason, "rollback_safe": self.answer}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RollbackRehearsal:
        return cls(str(data.get("after")), str(data.get("version")), str(data.get("status")),
                   int(data.get("requests") or 0), int(data.get("errors") or 0), data.get("first_error"),
                   opt_float(data.get("duration_s")), data.get("reason"))


def rollback_rehearsals(extra: Mapping[str, Any]) -> list[RollbackRehearsal]:
    """The rollback rehearsals of a report (its ``rollback_rehearsals`` block), in the order they ran."""
    return [RollbackRehearsal.from_json(r) for r in extra.get("rollback_rehearsals") or [] if isinstance(r, Mapping)]


@dataclass(frozen=True)
class Criterion:
    """One criterion of a canary step's analysis: PASS, FAIL, INCONCLUSIVE (too few answers to
    judge) or SKIP (nothing to judge: no --mixed-check)."""

    name: str  # error_ratio, p99_ratio, contract_violations, mixed_checks
    status: str
    value: float | int | None = None  # the new version's figure
    limit: float | int | None = None
    baseline: float | int | None = None  # the old version's figure over the same window
    detail: str | None = None

    def to_json(self) -> Json:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Criterion:
        return cls(str(data.get("name")), str(data.get("status")), data.get("value"), data.get("limit"),
                   data.get("baseline"), data.get("detail"))


@dataclass(frozen=True)
class CanaryStep:
    """One step of a canary: its weight, what the users got, and the analysis that let it go on
    (``passed``), stopped it (``failed``), or was cut short (``promoted``, ``aborted``); ``last``
    is the step at 100, which has no old version to compare with (``status`` ``done``)."""

    step: int  # 1-based
    weight: int  # percent of requests sent to the new version
    status: str  # passed, failed, promoted, aborted, done, not_measured
    observed_share: float | None = None  # share of answers from the new version in the window
    samples: Mapping[str, int] = field(default_factory=dict)  # answers per version in the window
    window_s: float = 0.0
    extensions: int = 0  # times the step was extended because it was inconclusive
    criteria: tuple[Criterion, ...] = ()
    reason: str | None = None
    new_servers: int | None = None  # new servers attached at this step
    old_servers: int | None = None

    def to_json(self) -> Json:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["samples"] = dict(self.samples)
        out["criteria"] = [c.to_json() for c in self.criteria]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CanaryStep:
        return cls(int(data.get("step") or 0), int(data.get("weight") or 0), str(data.get("status")),
                   opt_float(data.get("observed_share")), dict(data.get("samples") or {}),
                   float(data.get("window_s") or 0.0), int(data.get("extensions") or 0),
                   tuple(Criterion.from_json(c) for c in data.get("criteria") or []), data.get("reason"),
                   opt_int(data.get("new_servers")), opt_int(data.get("old_servers")))


@dataclass(frozen=True)
class Rollout:
    """What was rolled, how, and how it ended: the run's record beside its figures."""

    strategy: str | None = None
    size: int | None = None
    batch: int | None = None
    mode: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    outcome: str | None = None
    duration_s: float | None = None
    peak_instances: int | None = None
    project: str | None = None
    sticky: bool | None = None
    lb_apply: str | None = None
    client_keepalive_s: float | None = None
    users: int | None = None
    long_lived_users: int | None = None  # --ws-users plus --sse-users (None or 0: none; no long-lived checks)
    load: bool | None = None  # None: unknown, counts as on
    load_alive: bool | None = None  # None: unknown, counts as not alive (no PASS without evidence)
    seed: int | None = None
    detach_lag_s: float | None = None  # --detach-lag: the stop signal went out this long before each detach
    pick_order: tuple[tuple[int, ...], ...] = ()
    mixed_checks: tuple[MixedRecord, ...] = ()
    canary: tuple[CanaryStep, ...] = ()  # --strategy canary: each step's weight and analysis
    steps: tuple[Step, ...] = ()
    steps_t0: float | None = None
    unavoidable_s: float | None = None
    overhead_ratio: float | None = None

    @property
    def load_on(self) -> bool:
        """False only when the load was off; unknown counts as on."""
        return self.load is not False

    def title(self) -> str:
        """"rolling, 9 servers, batch 3, replace, v1 -> v2"."""
        parts = [str(self.strategy or "run")]
        if self.size is not None:
            parts.append(f"{self.size} servers")
        if self.batch is not None and strategies.of(self.strategy).title_names_batch(self.batch):
            parts.append(f"batch {self.batch}")
        if self.mode:
            parts.append(self.mode)
        if self.from_version and self.to_version:
            parts.append(f"{self.from_version} -> {self.to_version}")
        return ", ".join(parts)

    def order_text(self) -> str:
        """"[3] [1] [2] (seed 7)": the slots of each batch in the order they were picked."""
        batches = " ".join(f"[{', '.join(map(str, b))}]" for b in self.pick_order) or "-"
        return f"{batches} ({'seed ' + str(self.seed) if self.seed is not None else 'slot order, no --seed'})"


_HEAD = ("strategy", "size", "batch", "mode", "from_version", "to_version", "outcome", "duration_s",
         "peak_instances", "project", "sticky", "lb_apply", "client_keepalive_s", "users", "load", "load_alive",
         "seed", "detach_lag_s", "long_lived_users")


# --------------------------------------------------------------------------- checks and verdict


@dataclass(frozen=True)
class Check:
    """One named check: its figure, its limit, its status and why. Shows its figure and limit
    as "N" and "max N"; subclasses say otherwise for their kind of figure."""

    name: str
    status: Status
    value: Any
    limit: Any
    reason: str | None = None
    unit: str = ""

    KIND: ClassVar[str] = "at_most"

    @property
    def passed(self) -> bool:
        """Whether it holds: FAIL does not; PASS does; SKIP and NOT_RUN hold, and say why."""
        return self.status != "FAIL"

    @property
    def skipped(self) -> bool:
        return self.status in ("SKIP", "NOT_RUN")

    @property
    def result(self) -> str:
        """PASS, FAIL, or SKIP (for SKIP and NOT_RUN alike)."""
        return "SKIP" if self.skipped else self.status

    def figure(self) -> str:
        return "-" if self.value is None else f"{self.value}{self.unit}"

    def limit_text(self) -> str:
        return f"max {self.limit}"

    def line(self) -> str:
        """"FAIL stall_s  5.02 s (max 1.00 s)", with the reason after a colon."""
        text = f"{self.result} {self.name:<20} {self.figure()} ({self.limit_text()})"
        return f"{text}: {self.reason}" if self.reason else text

    def failure(self) -> str:
        """How the verdict line names it when it fails: "dropped 3 (max 0)"."""
        return f"{self.name} {self.figure()} ({self.limit_text()})"

    def to_json(self) -> Json:
        out: Json = {"name": self.name, "pass": self.passed, "value": self.value, "limit": self.limit}
        if self.reason:
            out["note"] = self.reason
        if self.skipped:
            out["skipped"] = True
        out.update(status=self.status, kind=self.KIND)
        if self.unit:
            out["unit"] = self.unit
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Check:
        kind = CHECK_KINDS.get(str(data.get("kind")), Check)
        status = data.get("status") or ("FAIL" if not data.get("pass") else "SKIP" if data.get("skipped") else "PASS")
        given: Json = {"name": str(data.get("name")), "status": status, "value": data.get("value"),
                                 "limit": data.get("limit"), "reason": data.get("note"),
                                 "unit": str(data.get("unit") or "")}
        given.update({f.name: data.get(f.name) for f in fields(kind) if f.name not in given})
        return kind(**given)


@dataclass(frozen=True)
class Seconds(Check):
    """A duration in seconds, at most the limit: "5.02 s (max 1.00 s)"."""

    KIND: ClassVar[str] = "seconds"

    def figure(self) -> str:
        return num(self.value, " s", 2)

    def limit_text(self) -> str:
        return f"max {num(float(self.limit), ' s', 2)}"


@dataclass(frozen=True)
class AtLeast(Check):
    """A count that must reach the limit: "12 (min 100)"."""

    KIND: ClassVar[str] = "at_least"

    def limit_text(self) -> str:
        return f"min {self.limit}"


@dataclass(frozen=True)
class Equals(Check):
    """A value that must equal the limit: "rolled_back (must be completed)"."""

    KIND: ClassVar[str] = "equals"

    def limit_text(self) -> str:
        return f"must be {self.limit}"


@dataclass(frozen=True)
class Alive(Check):
    """Yes or no, must be yes."""

    KIND: ClassVar[str] = "alive"

    def figure(self) -> str:
        return "-" if self.value is None else "yes" if self.value else "no"

    def limit_text(self) -> str:
        return "must be yes"


@dataclass(frozen=True)
class ExitZero(Check):
    """A ``--mixed-check`` command's exit status, must be 0; its failure names the command."""

    KIND: ClassVar[str] = "exit"

    def figure(self) -> str:
        return "-" if self.value is None else f"exit {self.value}"

    def limit_text(self) -> str:
        return f"must exit {self.limit}"

    def failure(self) -> str:
        return f"{super().failure()}: {self.reason}" if self.reason else super().failure()


@dataclass(frozen=True)
class P99(Check):
    """Rollout p99 against ``max_p99_ms`` and the steady p99 (see
    :func:`sandbox.results.verdict.p99_check` for the rule). ``value`` is the p99 ratio
    rollout / steady, ``limit`` ``max_p99_ratio``; the absolute figures ride beside them."""

    rollout_p99_ms: float | None = None
    steady_p99_ms: float | None = None
    max_p99_ms: float | None = None
    samples: Mapping[str, int] | None = None  # answers compared: {"steady": n, "rollout": n}
    min_samples: int | None = None

    KIND: ClassVar[str] = "p99"

    def figure(self) -> str:
        if self.rollout_p99_ms is None:
            return "-"
        ratio = "" if self.value is None else f", {num(self.value, 'x', 2)} steady"
        return f"{num(self.rollout_p99_ms, ' ms')}{ratio}"

    def limit_text(self) -> str:
        return f"max {num(self.max_p99_ms, ' ms', 0)}; {num(float(self.limit), 'x', 2)} if steady was over it"

    def to_json(self) -> Json:
        return {**super().to_json(), "rollout_p99_ms": self.rollout_p99_ms, "steady_p99_ms": self.steady_p99_ms,
                "max_p99_ms": self.max_p99_ms, "samples": None if self.samples is None else dict(self.samples),
                "min_samples": self.min_samples}


CHECK_KINDS: dict[str, type[Check]] = {k.KIND: k for k in (Check, Seconds, AtLeast, Equals, Alive, ExitZero, P99)}


@dataclass(frozen=True)
class Verdict:
    """Every check of one run; it passes only when there are checks and none failed."""

    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def failed_names(self) -> list[str]:
        return [c.name for c in self.failed]

    @property
    def judged(self) -> bool:
        """Whether any check was judged (a run that rehearsed nothing has every check NOT_RUN)."""
        return any(not c.skipped for c in self.checks)

    def line(self) -> str:
        """"PASS: all 9 checks held" (naming those not run), "NOT RUN: ..." when no check was judged,
        or "FAIL: " and each failed check."""
        if self.checks and not self.judged:
            reasons = sorted({c.reason or "not run" for c in self.checks})
            return f"NOT RUN: none of the {len(self.checks)} checks was judged: {'; '.join(reasons)}"
        if self.passed:
            skipped = [c.name for c in self.checks if c.skipped]
            return f"PASS: all {len(self.checks)} checks held" + (
                f" ({len(skipped)} not run: {', '.join(skipped)})" if skipped else "")
        return "FAIL: " + "; ".join(c.failure() for c in self.failed) if self.failed else "FAIL: no checks"

    def cell(self) -> str:
        """"PASS", or "FAIL: " and the names of the checks that failed."""
        return "PASS" if self.passed else "FAIL: " + ", ".join(self.failed_names)

    def to_json(self) -> Json:
        return {"pass": self.passed, "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(tuple(Check.from_json(c) for c in data.get("checks") or []))


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Report:
    """One run: its rollout record, its figures and its verdict. ``extra`` carries the blocks
    other modules add to ``report.json`` (attribution, faults, load_generator, files) untouched."""

    run: Rollout
    figures: Figures
    verdict: Verdict
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def to_json(self) -> Json:
        """The ``report.json`` shape."""
        run = self.run
        out: Json = {k: getattr(run, k) for k in _HEAD}
        out.update({
            "pick_order": [list(b) for b in run.pick_order],
            "mixed_checks": [r.to_json() for r in run.mixed_checks],
            **self.figures.to_json(),
            "steps": [s.to_json() for s in run.steps],
            "steps_t0": run.steps_t0,
            "unavoidable_s": run.unavoidable_s,
            "overhead_ratio": run.overhead_ratio,
            "verdict": self.verdict.to_json(),
        })
        if run.canary:
            out["canary"] = [c.to_json() for c in run.canary]
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        """A report read back from its JSON (a stored one, or one passed between processes)."""
        known = {*_HEAD, *_FIGURE_KEYS, "pick_order", "mixed_checks", "steps", "steps_t0", "unavoidable_s",
                 "overhead_ratio", "verdict", "canary"}
        run = Rollout(
            **{k: data.get(k) for k in _HEAD},
            pick_order=tuple(tuple(b) for b in data.get("pick_order") or []),
            mixed_checks=tuple(MixedRecord.from_json(r) for r in data.get("mixed_checks") or []),
            steps=tuple(Step.from_json(s) for s in data.get("steps") or []),
            steps_t0=opt_float(data.get("steps_t0")),
            unavoidable_s=opt_float(data.get("unavoidable_s")),
            overhead_ratio=opt_float(data.get("overhead_ratio")),
            canary=tuple(CanaryStep.from_json(c) for c in data.get("canary") or []),
        )
        return cls(run, Figures.from_json(data), Verdict.from_json(data.get("verdict") or {}),
                   {k: v for k, v in data.items() if k not in known})

