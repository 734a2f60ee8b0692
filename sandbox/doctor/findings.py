"""Doctor's findings: one per experiment, judged from the measured numbers alone (pure).

Each :class:`Finding` has a name, a status (PASS, WARN or FAIL), the evidence (numbers), the
requests that failed and when, and the fix in words. :func:`judge` makes them all; any FAIL makes
doctor exit 1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox.doctor.measure import (
    MAX_LAG_S,
    MIN_LAG_S,
    Capacity,
    Failure,
    KeepAlive,
    LocustfileRun,
    LongLived,
    Measurements,
    Readiness,
    StopRun,
    shell_pid1,
    tolerated_lag,
)

Status = Literal["PASS", "WARN", "FAIL"]
#: A server runs at most this share of the throughput doctor measured, at the rehearsed load.
HEADROOM = 0.7
#: The longest request may take at most this share of --stop-timeout before it is a warning.
LONG_REQUEST_SHARE = 0.5
#: How many failed requests a finding lists (the count is always whole).
SHOWN_FAILURES = 5
#: An exit code above this is 128 + the number of the signal that ended the process.
SIGNAL_EXIT = 128


@dataclass(frozen=True)
class Finding:
    """What one experiment found."""

    name: str
    status: Status
    summary: str  # one line: what was seen
    evidence: dict[str, Any]  # the numbers behind it
    fix: str = ""  # what to change, in words ("" for a PASS)
    failures: list[Failure] = field(default_factory=list)  # the requests that failed, first ones

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "evidence": self.evidence,
                "fix": self.fix, "failures": [{"at_s": f.at_s, "what": f.what} for f in self.failures]}


def judge(m: Measurements) -> list[Finding]:
    """Every finding of one run, in the order of the experiments."""
    out = [sigterm(m.stop, m.stop_timeout_s), pid1(m.pid1, m.stop), endpoint_lag(m),
           readiness(m.readiness), keepalive(m.keepalive),
           long_requests(m.longest_request_s, m.stop_timeout_s, m.locustfile)]
    out += [long_lived(one) for one in m.long_lived]
    out.append(capacity(m.capacity))
    return out


def exit_code(findings: list[Finding]) -> int:
    """1 when any finding fails, else 0."""
    return 1 if any(f.status == "FAIL" for f in findings) else 0


def _shown(failures: list[Failure]) -> list[Failure]:
    return failures[:SHOWN_FAILURES]


def _span(failures: list[Failure]) -> str:
    if not failures:
        return ""
    return f", +{failures[0].at_s:.2f} to +{failures[-1].at_s:.2f} s"


def sigterm(stop: StopRun, stop_timeout_s: float) -> Finding:
    """The stop signal to a detached server with requests in flight: they finish, it exits in time."""
    evidence = {"signal": stop.signal, "in_flight": stop.in_flight, "finished": stop.finished,
                "cut": len(stop.failures), "exit_s": stop.exit_s, "exit_code": stop.exit_code,
                "stop_timeout_s": stop_timeout_s}
    if stop.exit_s is None:
        return Finding("sigterm", "FAIL", f"still running {stop_timeout_s:g} s after {stop.signal}: killed "
                       f"(SIGKILL) at the stop timeout", evidence,
                       f"handle {stop.signal}: stop accepting, finish what is in flight, exit; make sure the app "
                       "itself receives it (exec form CMD, or an init such as tini)", _shown(stop.failures))
    if stop.failures:
        return Finding("sigterm", "FAIL", f"{len(stop.failures)} of {stop.in_flight} requests in flight cut by "
                       f"{stop.signal}{_span(stop.failures)}; exited after {stop.exit_s:.2f} s "
                       f"(code {stop.exit_code})", evidence,
                       f"on {stop.signal}, finish the requests in flight before exiting", _shown(stop.failures))
    if stop.exit_code is not None and stop.exit_code > SIGNAL_EXIT:
        return Finding("sigterm", "WARN", f"died of {stop.signal} itself (exit code {stop.exit_code}) "
                       f"{stop.exit_s:.2f} s after it: no handler, so whatever is in flight is cut; "
                       f"{stop.finished} of {stop.in_flight} in flight finished this time", evidence,
                       f"handle {stop.signal}: stop accepting, finish what is in flight, exit 0")
    return Finding("sigterm", "PASS", f"{stop.finished} of {stop.in_flight} requests in flight finished; exited "
                   f"{stop.exit_s:.2f} s after {stop.signal} (code {stop.exit_code}), within the stop timeout "
                   f"({stop_timeout_s:g} s)", evidence)


def pid1(command: str, stop: StopRun) -> Finding:
    """A shell as PID 1 that does not pass the stop signal on."""
    shell = shell_pid1(command)
    evidence = {"pid1": command, "shell": shell, "exited_on_signal": stop.exit_s is not None}
    if shell and stop.exit_s is None:
        return Finding("pid1", "FAIL", f"PID 1 is a shell ({command!r}) that does not pass {stop.signal} on",
                       evidence, "use the exec form (CMD [\"app\", ...]) or `exec app` at the end of the script, "
                       "so the app is PID 1; or run an init (docker run --init, tini) that forwards signals")
    if shell:
        return Finding("pid1", "WARN", f"PID 1 is a shell ({command!r}); it stopped on {stop.signal} this time",
                       evidence, "prefer the exec form so the app itself gets the stop signal")
    return Finding("pid1", "PASS", f"PID 1 is {command!r}, not a shell", evidence)


def endpoint_lag(m: Measurements) -> Finding:
    """The lag between the stop signal and the LB detaching the server that the app survives."""
    trials = sorted(m.lag, key=lambda t: t.lag_s)
    tolerated = tolerated_lag(trials)
    evidence = {"trials": {f"{t.lag_s:g}": {"sent": t.sent, "dropped": len(t.failures)} for t in trials},
                "tolerated_lag_s": tolerated, "rehearsed_up_to_s": MAX_LAG_S,
                "pre_stop_sleep_s": pre_stop_sleep_s(m)}
    worst = max(trials, key=lambda t: len(t.failures), default=None)
    failures = _shown(worst.failures) if worst else []
    if tolerated is not None and tolerated >= MAX_LAG_S:
        return Finding("endpoint_lag", "PASS", f"keeps serving after {m.stop_signal}: nothing dropped with the LB "
                       f"detaching {MAX_LAG_S:g} s after the signal; needs no preStop sleep", evidence)
    sleep = pre_stop_sleep_s(m)
    fix = (f"delay the stop signal until the endpoint is gone: Kubernetes lifecycle.preStop sleep {sleep} s, "
           f"Nomad shutdown_delay {sleep}s; or keep serving {MAX_LAG_S:g} s after {m.stop_signal} before closing")
    if tolerated is None or tolerated < MIN_LAG_S:
        kept = "no lag at all" if tolerated is None else f"only {tolerated:g} s"
        return Finding("endpoint_lag", "FAIL", f"drops requests when the LB detaches it after {m.stop_signal}: it "
                       f"tolerates {kept} ({len(worst.failures) if worst else 0} dropped at lag "
                       f"{worst.lag_s if worst else 0:g} s)", evidence, fix, failures)
    return Finding("endpoint_lag", "WARN", f"tolerates {tolerated:g} s between {m.stop_signal} and the LB "
                   f"detaching it, not {MAX_LAG_S:g} s", evidence, fix, failures)


def pre_stop_sleep_s(m: Measurements) -> int:
    """The preStop sleep / shutdown delay to set: the lag rehearsed, less the lag the app survives."""
    return max(0, math.ceil(MAX_LAG_S - (tolerated_lag(m.lag) or 0.0)))


def readiness(r: Readiness) -> Finding:
    """Real requests right after the readiness check first passed."""
    evidence = {"ready_s": r.ready_s, "sent": r.sent, "failed": len(r.failures), "serves_after_s": r.serves_after_s}
    if not r.failures:
        return Finding("readiness", "PASS", f"serves at once: {r.sent} requests in the first seconds after ready "
                       f"({r.ready_s:.2f} s after start), none failed", evidence)
    return Finding("readiness", "FAIL", f"readiness passes too early: {len(r.failures)} of {r.sent} requests failed "
                   f"after ready{_span(r.failures)}; it really serves {r.serves_after_s:.2f} s after ready",
                   evidence, f"make the health path answer only once the app serves (pools, caches, routes); "
                   f"until then, minReadySeconds / readiness_delay {math.ceil(r.serves_after_s)} s",
                   _shown(r.failures))


def keepalive(k: KeepAlive) -> Finding:
    """The app's idle timeout against the LB's upstream keep-alive."""
    evidence = {"app_idle_s": k.app_idle_s, "lb_idle_s": k.lb_idle_s, "race_sent": k.race_sent,
                "race_failed": len(k.race_failures), "fixed_sent": k.fixed_sent, "fixed_failed": len(k.fixed_failures)}
    if k.app_idle_s is None or k.app_idle_s > k.lb_idle_s:
        held = "past" if k.app_idle_s is None else f"{k.app_idle_s:.1f} s, longer than"
        return Finding("keepalive", "PASS", f"the app keeps idle connections {held} the LB's upstream keep-alive "
                       f"({k.lb_idle_s:g} s): the proxy closes first", evidence)
    raced = (f"; the race provoked: {len(k.race_failures)} of {k.race_sent} requests failed, "
             f"{len(k.fixed_failures)} of {k.fixed_sent} with the LB's below the app's" if k.race_sent else "")
    return Finding("keepalive", "FAIL", f"the app closes idle connections after {k.app_idle_s:.1f} s, before the "
                   f"LB's upstream keep-alive ({k.lb_idle_s:g} s){raced}", evidence,
                   f"keep idle connections open longer than every proxy in front (e.g. {math.ceil(k.lb_idle_s) + 5} "
                   f"s), or set the proxy's upstream keepalive_timeout below {k.app_idle_s:.0f} s",
                   _shown(k.race_failures))


def long_requests(longest_s: float, stop_timeout_s: float, locust: LocustfileRun | None = None) -> Finding:
    """The longest request seen (doctor's own; with ``--locustfile``, your locustfile's too) against
    the stop timeout."""
    found = _long_requests(longest_s, stop_timeout_s)
    if locust is None:
        return found
    said = (f"; your locustfile: {locust.requests} requests in {locust.seconds:g} s, {locust.failed} failed, "
            f"the longest {locust.longest_name} {locust.longest_s:.2f} s")
    return dataclasses.replace(found, summary=found.summary + said,
                               evidence={**found.evidence, "locustfile": dataclasses.asdict(locust)})


def _long_requests(longest_s: float, stop_timeout_s: float) -> Finding:
    evidence: dict[str, Any] = {"longest_request_s": round(longest_s, 3), "stop_timeout_s": stop_timeout_s}
    if longest_s >= stop_timeout_s:
        return Finding("long_requests", "FAIL", f"the longest request took {longest_s:.2f} s, at least the stop "
                       f"timeout ({stop_timeout_s:g} s): it is cut at SIGKILL", evidence,
                       f"raise the stop timeout / terminationGracePeriodSeconds above {math.ceil(longest_s) + 5} s, "
                       "or move such work to a queue")
    if longest_s >= LONG_REQUEST_SHARE * stop_timeout_s:
        return Finding("long_requests", "WARN", f"the longest request took {longest_s:.2f} s, over half the stop "
                       f"timeout ({stop_timeout_s:g} s)", evidence,
                       f"leave room: a stop timeout of {math.ceil(2 * longest_s) + 5} s")
    return Finding("long_requests", "PASS", f"the longest request took {longest_s:.2f} s, well within the stop "
                   f"timeout ({stop_timeout_s:g} s)", evidence)


def long_lived(one: LongLived) -> Finding:
    """A WebSocket or SSE connection across a stop."""
    name, label = (f"websocket {one.path}", "WebSocket") if one.kind == "ws" else (f"sse {one.path}", "SSE stream")
    evidence = {"kind": one.kind, "path": one.path, "outcome": one.outcome, "close_code": one.close_code,
                "after_s": one.after_s}
    fix = ("on the stop signal, close each WebSocket with a close frame (1001 going away or 1012 service restart); "
           "end each SSE stream after sending `retry:` with a jittered delay; clients reconnect with jitter")
    if one.outcome == "refused":
        return Finding(name, "FAIL", f"{one.path} did not open a {label}", evidence,
                       f"check --{one.kind}-path: the app must serve a {label} there")
    if one.outcome == "closed":
        code = f" (code {one.close_code})" if one.close_code is not None else ""
        return Finding(name, "PASS", f"the stop closed the {label} properly{code} {one.after_s:.2f} s after the "
                       "signal", evidence)
    seen = "still open when the server exited" if one.outcome == "open" else "cut without a close frame" \
        if one.kind == "ws" else "cut without the stream's end"
    return Finding(name, "FAIL", f"the {label} was {seen}: every client reconnects at the same instant",
                   evidence, fix)


def safe_batch(c: Capacity) -> int:
    """Servers that may be out of service at once while the rest carry the rehearsed load."""
    per_server = c.rps * HEADROOM
    needed = math.ceil(c.offered_rps / per_server) if per_server > 0 else c.size
    return max(0, c.size - needed)


def safe_surge(c: Capacity) -> int:
    """New servers to start at once: as many as may be out of service, at least one (booting them
    costs the serving ones CPU, so no more than that)."""
    return max(1, min(safe_batch(c) or 1, c.size))


def capacity(c: Capacity) -> Finding:
    """Boot time, memory and throughput, and the batch and surge they allow."""
    batch, surge = safe_batch(c), safe_surge(c)
    evidence = {"boots": len(c.boots_s), "boot_p50_s": round(c.boot_p50_s, 2), "boot_max_s": round(c.boot_max_s, 2),
                "idle_mib": c.idle_mib, "loaded_mib": c.loaded_mib, "limit_mib": c.limit_mib,
                "rps_per_server": round(c.rps, 1), "p99_ms": round(c.p99_ms, 1), "offered_rps": round(c.offered_rps, 1),
                "size": c.size, "max_unavailable": batch, "max_surge": surge}
    text = (f"boot {c.boot_p50_s:.2f} s p50 / {c.boot_max_s:.2f} s max over {len(c.boots_s)}, "
            f"{c.rps:.0f} req/s per server (p99 {c.p99_ms:.0f} ms), memory {_mib(c.idle_mib)} idle / "
            f"{_mib(c.loaded_mib)} loaded; {c.size} servers at {c.offered_rps:.0f} req/s allow "
            f"maxUnavailable {batch}, maxSurge {surge}")
    if c.limit_mib and c.loaded_mib and c.loaded_mib > 0.8 * c.limit_mib:
        return Finding("capacity", "WARN", text, evidence,
                       f"loaded memory is over 80% of the limit ({c.limit_mib:.0f} MiB): raise it before surging")
    if batch == 0:
        return Finding("capacity", "WARN", text, evidence,
                       "the rehearsed load needs every server: roll with a surge (maxUnavailable 0), never a batch")
    return Finding("capacity", "PASS", text, evidence)


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} MiB"
