"""Settings to paste into your real engine, generated from what doctor measured (pure).

:class:`Recommendation` is derived once from the measurements; each engine's snippet renders it:
Kubernetes (a Deployment's strategy, readinessProbe, preStop, grace period), Docker Compose /
Swarm, Nomad (HCL) and Kamal. The unit tests parse every snippet (YAML, and HCL with python-hcl2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from sandbox.doctor.findings import pre_stop_sleep_s, safe_batch, safe_surge
from sandbox.doctor.measure import Measurements

#: Seconds of margin added to every measured duration a setting bounds.
MARGIN_S = 5


@dataclass(frozen=True)
class Recommendation:
    """The numbers every snippet is made of."""

    stop_signal: str
    pre_stop_sleep_s: int
    grace_s: int  # stop signal to SIGKILL: the preStop sleep, the slowest of exit and longest request, a margin
    min_ready_s: int  # how long after "ready" the app really serves
    health_path: str  # "" when the app has none: a TCP check
    port: int
    boot_p50_s: float
    healthy_deadline_s: int
    max_unavailable: int
    max_surge: int

    @classmethod
    def of(cls, m: Measurements) -> Recommendation:
        sleep = pre_stop_sleep_s(m)
        stopping = max(m.stop.exit_s if m.stop.exit_s is not None else m.stop_timeout_s, m.longest_request_s)
        return cls(stop_signal=m.stop_signal, pre_stop_sleep_s=sleep,
                   grace_s=sleep + math.ceil(stopping) + MARGIN_S,
                   min_ready_s=math.ceil(m.readiness.serves_after_s), health_path=m.health_path, port=m.app_port,
                   boot_p50_s=m.capacity.boot_p50_s,
                   healthy_deadline_s=math.ceil(3 * m.capacity.boot_max_s) + 10 * MARGIN_S,
                   max_unavailable=safe_batch(m.capacity), max_surge=safe_surge(m.capacity))

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def _q(text: str) -> str:
    """A double-quoted string for YAML and HCL alike (JSON's escaping is valid in both)."""
    return json.dumps(text)


def kubernetes(r: Recommendation) -> str:
    """The Deployment fields (strategy, minReadySeconds, readinessProbe, preStop, grace period)."""
    probe = (f"            httpGet:\n              path: {_q(r.health_path)}\n              port: {r.port}\n"
             if r.health_path else f"            tcpSocket:\n              port: {r.port}\n")
    pre_stop = (f"          lifecycle:\n            preStop:\n              sleep:\n"
                f"                seconds: {r.pre_stop_sleep_s}\n" if r.pre_stop_sleep_s else "")
    return ("apiVersion: apps/v1\nkind: Deployment\nspec:\n"
            f"  minReadySeconds: {r.min_ready_s}\n"
            "  strategy:\n    type: RollingUpdate\n    rollingUpdate:\n"
            f"      maxSurge: {r.max_surge}\n      maxUnavailable: {r.max_unavailable}\n"
            "  template:\n    spec:\n"
            f"      terminationGracePeriodSeconds: {r.grace_s}\n"
            "      containers:\n        - name: app\n"
            f"          readinessProbe:\n{probe}"
            f"            initialDelaySeconds: {math.floor(r.boot_p50_s)}\n"
            "            periodSeconds: 2\n            failureThreshold: 2\n"
            f"{pre_stop}")


def compose(r: Recommendation) -> str:
    """A Compose service (Swarm reads ``deploy``)."""
    check = (f"curl -fsS http://127.0.0.1:{r.port}{r.health_path} || exit 1" if r.health_path
             else f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{r.port}' || exit 1")
    return ("services:\n  app:\n"
            f"    stop_signal: {r.stop_signal}\n"
            f"    stop_grace_period: {r.grace_s}s\n"
            f"    healthcheck:\n      test: [\"CMD-SHELL\", {_q(check)}]\n"
            f"      interval: 2s\n      timeout: 2s\n      retries: 2\n"
            f"      start_period: {math.ceil(r.boot_p50_s)}s\n"
            "    deploy:\n      update_config:\n"
            f"        parallelism: {max(1, r.max_unavailable, r.max_surge)}\n"
            f"        delay: {r.min_ready_s}s\n"
            f"        order: {'start-first' if r.max_unavailable == 0 else 'stop-first'}\n"
            f"        monitor: {r.min_ready_s + MARGIN_S}s\n        failure_action: rollback\n")


def nomad(r: Recommendation) -> str:
    """A Nomad group's ``update`` block and task settings."""
    check = (f"      check {{\n        type     = \"http\"\n        path     = {_q(r.health_path)}\n"
             if r.health_path else "      check {\n        type     = \"tcp\"\n")
    return ("group \"app\" {\n"
            f"  shutdown_delay = \"{r.pre_stop_sleep_s}s\"\n"
            "  update {\n"
            f"    max_parallel     = {max(1, r.max_unavailable)}\n"
            f"    canary           = {r.max_surge if r.max_unavailable == 0 else 0}\n"
            f"    min_healthy_time = \"{max(1, r.min_ready_s)}s\"\n"
            f"    healthy_deadline = \"{r.healthy_deadline_s}s\"\n"
            "    auto_revert      = true\n"
            "  }\n"
            "  service {\n"
            f"    port = {r.port}\n"
            f"{check}"
            "        interval = \"2s\"\n        timeout  = \"2s\"\n      }\n  }\n"
            "  task \"app\" {\n"
            f"    kill_signal  = {_q(r.stop_signal)}\n"
            f"    kill_timeout = \"{r.grace_s}s\"\n"
            "  }\n}\n")


def kamal(r: Recommendation) -> str:
    """Kamal 2's ``deploy.yml`` keys."""
    path = r.health_path or "/up"
    return (f"readiness_delay: {math.ceil(r.boot_p50_s) + r.min_ready_s}\n"
            f"drain_timeout: {r.grace_s}\n"
            f"deploy_timeout: {r.healthy_deadline_s}\n"
            "boot:\n"
            f"  limit: {max(1, r.max_unavailable)}\n"
            f"  wait: {r.min_ready_s}\n"
            "proxy:\n"
            f"  app_port: {r.port}\n"
            "  healthcheck:\n"
            f"    path: {_q(path)}\n"
            "    interval: 2\n"
            "    timeout: 2\n")


SNIPPETS = {"kubernetes": kubernetes, "compose": compose, "nomad": nomad, "kamal": kamal}


def all_snippets(r: Recommendation) -> dict[str, str]:
    """Each engine's snippet, by engine name."""
    return {name: render(r) for name, render in SNIPPETS.items()}
