"""The live view of a rollout as plain data: what the terminal table and the dashboard show.

:class:`RolloutState` is a reducer: it takes the executor's events, the step about to run,
and traffic snapshots, and keeps one JSON-ready dict (``snapshot()``). No I/O, no clock of
its own (every call carries its time), so the tests replay events and compare dicts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.results.model import Report
from sandbox.results.records import Event
from sandbox.rollout import strategies
from sandbox.rollout.steps import Mode

# The seed's six steps (DESIGN.md, README "What a rollout does"), in order.
SEED_STEPS = (
    ("pick", "pick the server(s)"),
    ("detach", "detach from the load balancer"),
    ("drain", "wait for in-flight requests"),
    ("replace", "replace or reload"),
    ("ready", "wait until ready"),
    ("attach", "re-attach"),
)
STEP_OF_ACTION = {
    "detach": "detach", "drain": "drain", "stop": "replace", "kill": "replace", "start": "replace",
    "swap": "replace", "ready": "ready", "attach": "attach", "switch": "attach", "reattach": "attach",
    "term": "detach",  # --detach-lag: the stop signal opens the detach, which follows after the lag
}
# what a server is doing after each per-server event
STATE_OF_PHASE = {
    "start": "starting", "ready": "ready", "attach": "attached", "detach": "draining",
    "drain": "drained", "stop": "removed", "kill": "removed", "swap": "starting", "term": "stopping",
    "died": "removed",  # crashed, or lost with its Swarm node
}
REMOVED_LINGER_S = 3.0  # a removed server stays (faded) this long, then leaves the grid
SERIES_MAX = 600  # points kept in the share-over-time series

# One sentence per planner action (and "pick"); {lb_out}, {lb_in}, {one_change} and {passes} say what
# the fleet's load balancer mode and readiness setting really do (LB_WORDS, narrate).
NARRATION = {
    "pick": "Batch 1: the plan picks {slots}. Only {leave} at a time, so at least "
            "{floor} of {size} keep serving users.",
    "pick-surge": "Batch 1: the plan picks {slots}. New servers start beside the old ones, so all {size} "
                  "keep serving users until the new ones are ready.",
    "detach": "Detach: {lb_out}; new requests stop going there, the ones already running carry on.",
    "drain": "Drain: we wait until no request is in flight on {slots}. Stopping earlier would drop those "
             "requests.",
    "term": "Stop signal first: {slots} get the stop signal while the load balancer still routes to them, as "
            "Kubernetes does; the detach follows after the lag. An app that exits at once drops what still arrives.",
    "stop": "Replace: with nothing in flight and out of the load balancer, {slots} can stop without costing "
            "any user a request.",
    "kill": "Naive: killing {slots} while it still gets traffic. Watch the dropped counter.",
    "start": "Replace: {to} starts in {slots}. No traffic goes there until it is ready.",
    "swap": "Reload: the {to} code is copied into {slots} and the app process reloads, out of traffic.",
    "ready": "Readiness: we poll the readiness check of {slots} until every new server passes {passes}. "
             "Attaching earlier would send users to a server that cannot answer yet.",
    "attach": "Re-attach: {lb_in}. Users now get {to} answers from there.",
    "switch": "Switch: {one_change} moves traffic to the new servers in {slots} at once.",
    "reattach": "Re-attach and detach: {one_change} puts {slots} back in, answering with {to}, and takes "
                "{next} out for the next batch; the new servers serve before the old ones leave.",
}
LB_WORDS = {  # how a change of the attached set reaches NGINX, per lb_apply mode (README, "What a rollout does")
    "dynamic": {"lb_out": "one change to the load balancer's server set takes {slots} out, with no reload",
                "lb_in": "one change to the load balancer's server set puts {slots} back in, with no reload",
                "one_change": "one change to the load balancer's server set, with no reload,"},
    "reload": {"lb_out": "NGINX gets a new config without {slots} and reloads gracefully",
               "lb_in": "NGINX reloads gracefully with {slots} back in",
               "one_change": "one graceful reload of NGINX"},
}


def narrate(key: str, slots: Sequence[int], *, size: int, batch: int, floor: int, to: str,
            lb_apply: str = "dynamic", ready_successes: int = 1, detach: Sequence[int] = ()) -> str:
    """One sentence on what a step of the first batch does and why, as the fleet's ``lb_apply`` mode
    and ``ready_successes`` make it happen; ``detach``: the slots a 'reattach' takes out."""
    if key == "pick" and batch == 0:  # surge, double-half, blue-green: nobody leaves before the new ones serve
        key = "pick-surge"
    if key == "switch" and not slots:  # a resumed fleet's switch that only takes servers out
        key, slots = "detach", detach
    names = _slot_names(slots)
    words = {k: v.format(slots=names) for k, v in LB_WORDS[lb_apply].items()}
    passes = "once" if ready_successes == 1 else f"{ready_successes} times in a row"
    leave = "1 server leaves" if batch == 1 else f"{batch} servers leave"
    return NARRATION[key].format(slots=names, size=size, leave=leave, floor=floor, to=to, passes=passes,
                                 next=_slot_names(detach), **words)


def _slot_names(slots: Sequence[int]) -> str:
    """"slot 2" or "slots 1, 3"."""
    numbers = sorted(set(slots))
    return ("slot " if len(numbers) == 1 else "slots ") + (", ".join(map(str, numbers)) or "?")


@dataclass
class RolloutState:
    """Everything the live views show, updated by events; ``snapshot()`` is the JSON."""

    size: int = 0
    run: dict[str, Any] = field(default_factory=dict)
    promise: dict[str, Any] | None = None
    phase: str = "waiting"  # waiting, warming up, rolling, finishing, ended
    batch: int = 0
    step: dict[str, Any] | None = None
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> server
    live: dict[str, Any] = field(default_factory=lambda: {
        "rps": {}, "p99_ms": None, "dropped": 0, "total": 0, "share": []})
    narration: str | None = None
    narration_batch: int = 0  # the narration is cleared once the rollout moves past this batch
    log: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    compare: list[dict[str, Any]] = field(default_factory=list)
    table: list[dict[str, Any]] | None = None  # compare's table, at the very end
    t0: float | None = None
    seq: int = 0

    # -- inputs --------------------------------------------------------------------------------
    def configure(self, *, strategy: str, batch: int = 1, mode: Mode = "replace", to_version: str = "",
                  size: int = 0, title: str = "") -> None:
        """What this run is (before any event); where from, the versions and the promise come with
        its plan (``planned``). ``to_version`` "": the fleet's last declared version, not known yet."""
        self.size = size or self.size
        self.run = {"strategy": strategy, "batch": batch, "mode": mode, "to": to_version or None, "from": None,
                    "title": title}
        self.promise = None
        self._changed()

    def planned(self, *, strategy: str, source: str, target: str, size: int, versions: Sequence[str],
                floor: int | None, peak: int | None, batches: int | None) -> None:
        """The plan about to run: its versions and its own figures, which make the promise
        (none for a plan without figures)."""
        self.size = size
        self.run.setdefault("strategy", strategy)
        self.run.update({"from": source, "to": target, "versions": list(versions)})
        self.promise = None if floor is None or peak is None else {
            "floor": floor, "peak": peak, "batches": batches or 0, "size": size,
            "text": strategies.of(strategy).promise(floor, peak, size)}
        self._changed()

    def fleet_mode(self, *, lb_apply: str, ready_successes: int) -> None:
        """How this fleet's load balancer takes changes and how many passes readiness needs (the narration says it)."""
        self.run.update(lb_apply=lb_apply, ready_successes=ready_successes)
        self._changed()

    def seed(self, name: str, slot: int, version: str, attached: bool, node: str = "") -> None:
        self.servers[name] = {"name": name, "slot": slot, "version": version,
                              "state": "attached" if attached else "idle", "in_flight": None, "since": None,
                              "node": node}
        self.size = max(self.size, slot)
        self._changed()

    def event(self, event: Event) -> None:
        phase, t = event["phase"], float(event.get("t") or 0.0)
        if self.t0 is None:
            self.t0 = t
        if batch := event.get("batch"):
            self.batch = int(batch)
        name = event.get("instance")
        if name and phase in STATE_OF_PHASE:
            self._server_event(name, phase, t, event)
        elif phase in ("load-start", "rollout-start", "rollout-end", "load-stop", "failed",
                       "rollback-start", "rollback-end", "interrupted", "paused", "resumed", "abort",
                       "canary-weight", "canary-analysis"):
            self._run_event(phase, event)
        self._log(t, _event_line(event))
        self._changed()

    def step_started(self, action: str, batch: int, slots: Sequence[int], t: float) -> None:
        """The executor is about to run ``action`` on ``slots`` (batch ``batch``)."""
        self.batch = batch
        if self.narration and batch > self.narration_batch:
            self.narration = None
        key = STEP_OF_ACTION.get(action, action)
        keys = [k for k, _ in SEED_STEPS]
        number = keys.index(key) + 1 if key in keys else 0
        self.step = {"action": action, "key": key, "number": number, "label": dict(SEED_STEPS).get(key, action),
                     "slots": sorted(set(slots)), "t": t}
        if action in ("stop", "kill"):
            for s in self.servers.values():
                if s["slot"] in slots and s["state"] in ("drained", "draining", "attached"):
                    s["state"] = "stopping"
        self._changed()

    def say(self, text: str, t: float) -> None:
        """A narration sentence (``demo --narrate``)."""
        self.narration, self.narration_batch = text, self.batch
        self._log(t, text)
        self._changed()

    def line(self, text: str, t: float) -> None:
        self._log(t, text)
        self._changed()

    def traffic(self, figures: Mapping[str, Any], now: float) -> None:
        """Live figures from a :meth:`TrafficMonitor.figures` snapshot; prunes removed servers."""
        if self.t0 is None:
            self.t0 = now
        rps = dict(figures.get("rps") or {})
        total_rps = sum(rps.values())
        share = self.live["share"]
        if total_rps > 0:
            share.append([round(now - self.t0, 2), {v: round(r / total_rps, 4) for v, r in rps.items()}])
            del share[:-SERIES_MAX]
        self.live.update(rps=rps, p99_ms=figures.get("p99_ms"), dropped=int(figures.get("dropped") or 0),
                         total=int(figures.get("total") or 0))
        self.prune(now)
        self._changed()

    def long_lived(self, open_by_version: Mapping[str, int], now: float) -> None:
        """Open long-lived connections now per version, as the dynamic LB counts them (``live.long_lived``,
        and ``live.long_lived_series``: ``[t, {version: open}]`` over time)."""
        if self.t0 is None:
            self.t0 = now
        counts = {str(v): int(n) for v, n in open_by_version.items()}
        self.live["long_lived"] = counts
        series = self.live.setdefault("long_lived_series", [])
        series.append([round(now - self.t0, 2), counts])
        del series[:-SERIES_MAX]
        self._changed()

    def prune(self, now: float) -> None:
        for name in [n for n, s in self.servers.items()
                     if s["state"] == "removed" and s["since"] is not None and now - s["since"] > REMOVED_LINGER_S]:
            del self.servers[name]

    def finish(self, report: Report) -> None:
        """The run's report arrived: its verdict (as judged when it was built) and its figures."""
        run, fig = report.run, report.figures
        self.result = {
            "passed": report.passed, "verdict": report.verdict.line(), "outcome": run.outcome,
            "strategy": run.strategy, "batch": run.batch,
            "figures": {
                "duration_s": run.duration_s, "peak_instances": run.peak_instances,
                "total": fig.requests.total, "dropped": fig.requests.dropped,
                "by_version": dict(fig.requests.by_version), "p99_ms": fig.latency.p99, "stall_s": fig.stall_s,
                "mixed_window_s": fig.exposure.mixed_window_s, "users_saw_both": fig.exposure.users_saw_both,
                "users_total": fig.exposure.users_total,
            },
            "files": {k: str(v) for k, v in (report.extra.get("files") or {}).items()},
        }
        self.live["dropped"] = fig.requests.dropped
        self.servers = {n: s for n, s in self.servers.items() if s["state"] != "removed"}
        self.phase = "ended"
        self.step = None
        self._changed()

    def add_panel(self) -> None:
        """compare: file the finished run as a panel and clear the board for the next one."""
        if self.result is not None:
            self.compare.append({**self.result, "run": dict(self.run), "share": self.live["share"][-120:]})
        self.servers.clear()
        self.result, self.step, self.narration, self.batch, self.t0 = None, None, None, 0, None
        self.live = {"rps": {}, "p99_ms": None, "dropped": 0, "total": 0, "share": []}
        self.phase = "waiting"
        self._changed()

    def set_table(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """compare: the comparison table (one row per strategy, as ``compare_json``)."""
        self.table = [dict(r) for r in rows]
        self.phase = "ended"
        self._changed()

    # -- output --------------------------------------------------------------------------------
    def slots(self) -> list[dict[str, Any]]:
        """One entry per slot 1..size, its servers oldest first (a replaced one fades out)."""
        by_slot: dict[int, list[dict[str, Any]]] = {n: [] for n in range(1, self.size + 1)}
        for s in self.servers.values():
            by_slot.setdefault(int(s["slot"] or 0), []).append(dict(s))
        return [{"slot": n, "servers": by_slot[n]} for n in sorted(by_slot)]

    def versions(self) -> dict[str, int]:
        """Servers taking traffic now, by version."""
        counts: dict[str, int] = {}
        for s in self.servers.values():
            if s["state"] == "attached":
                counts[s["version"]] = counts.get(s["version"], 0) + 1
        return counts

    def snapshot(self) -> dict[str, Any]:
        batches = (self.promise or {}).get("batches") or 0
        return {
            "seq": self.seq, "phase": self.phase, "run": dict(self.run), "size": self.size,
            "promise": self.promise, "batch": {"current": self.batch, "total": max(batches, self.batch)},
            "step": dict(self.step) if self.step else None,
            "steps": [label for _, label in SEED_STEPS],
            "slots": self.slots(), "versions": self.versions(), "live": copy.deepcopy(self.live),
            "nodes": sorted({str(s["node"]) for s in self.servers.values() if s.get("node")}),
            "narration": self.narration, "log": list(self.log[-8:]),
            "result": copy.deepcopy(self.result), "compare": copy.deepcopy(self.compare),
            "table": copy.deepcopy(self.table),
        }

    # -- internals -----------------------------------------------------------------------------
    def _server_event(self, name: str, phase: str, t: float, event: Event) -> None:
        s = self.servers.setdefault(name, {"name": name, "slot": event.get("slot"), "version": event.get("version"),
                                           "state": "", "in_flight": None, "since": None})
        s["state"] = STATE_OF_PHASE[phase]
        if event.get("version"):
            s["version"] = event.get("version")
        if event.get("node"):
            s["node"] = event.get("node")
        if event.get("slot") is not None:
            s["slot"] = event.get("slot")
            self.size = max(self.size, int(event["slot"] or 0))
        detail = event.get("detail") or {}
        s["in_flight"] = detail.get("in_flight") if phase == "detach" else None
        s["since"] = t
        if phase == "kill":
            s["killed"] = True

    def _run_event(self, phase: str, event: Event) -> None:
        detail = event.get("detail") or {}
        if phase == "load-start":
            self.phase = "warming up"
        elif phase == "rollout-start":
            self.phase = "rolling"
            self.run.setdefault("strategy", detail.get("strategy"))
            self.run.update({k: detail[k] for k in ("from", "to", "kind") if k in detail})
        elif phase == "rollout-end":
            self.phase = "finishing"
            self.step = None
            self.run["outcome"] = detail.get("outcome")
        elif phase == "failed":
            self.run["failure"] = detail.get("reason")
        elif phase == "rollback-start":
            self.phase = "rolling back"
        elif phase == "canary-weight":  # --strategy canary: the weight now, and each step's analysis
            self.run["canary_weight"] = detail.get("weight")
        elif phase == "canary-analysis":
            self.run.setdefault("canary", []).append(dict(detail))
        elif phase == "paused":  # `sandbox pause`, or the plan's --pause-after-batch or --pause-at-mixed
            self.phase = "paused"
            pid = detail.get("pid")
            self.run["paused_by"] = f"{detail.get('by')}" + (f" (pid {pid})" if pid is not None else "")
        elif phase in ("resumed", "abort") and self.phase == "paused":
            self.phase = "rolling" if phase == "resumed" else "aborting"
            self.run.pop("paused_by", None)

    def _log(self, t: float, text: str) -> None:
        rel = t - self.t0 if self.t0 is not None else 0.0
        self.log.append(f"{rel:6.1f}s {text}")
        del self.log[:-50]

    def _changed(self) -> None:
        self.seq += 1


def _event_line(event: Event) -> str:
    detail = event.get("detail") or {}
    extra = " ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, list))
    return f"{event['phase']:<14} {event.get('instance') or ''} {event.get('version') or ''} {extra}".rstrip()
