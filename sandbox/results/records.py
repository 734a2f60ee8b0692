"""The record shapes that cross process and module boundaries.

* ``RequestRow``: one per request the load generator started, written as a JSON
  line by the Locust listener (``sandbox/load/locustfile.py``) and read by ``measure``.
* ``Event``: one per controller step (``sandbox/rollout/executor.py``), in the report's
  ``steps`` and used by ``measure`` to split phases and to know when a server
  vanished.
The load balancer's access-log rows are :class:`~sandbox.fleet.loadbalancer.LbRow`: the
load balancer reads its own log format (``sandbox/fleet/nginx_log.py``).

They are plain dicts (JSON in, JSON out) described by TypedDicts, so the Locust
process needs nothing from the controller's side to write them.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal, NotRequired, TypedDict

LOAD_RID_PREFIX = "ls-"
"""The load generator's request ids are ``ls-`` and 32 hex digits: NGINX's own ids (``$request_id``,
given to requests that carry none, such as the controller's probes) are bare hex, so the access log
tells the load's requests from everything else."""
_LOAD_RID = re.compile(r"ls-[0-9a-f]{32}")


def new_load_rid() -> str:
    """A fresh request id in the load generator's format."""
    return LOAD_RID_PREFIX + uuid.uuid4().hex


def is_load_rid(rid: str) -> bool:
    """Whether ``rid`` is in the load generator's format (see :data:`LOAD_RID_PREFIX`)."""
    return _LOAD_RID.fullmatch(rid) is not None


class RequestRow(TypedDict):
    t: float  # unix time the request was sent
    t_end: float | None  # unix time the answer (or error) arrived; None when unanswered
    user: str  # simulated user id, stable for the user's life
    rid: str  # request id, sent as X-Request-ID and logged by NGINX
    method: str
    name: str  # request name (path template), e.g. "/api/items/[id]"
    status: int  # HTTP status; 0 when no HTTP answer (connection error, reset, timeout, unanswered)
    version: str | None  # X-App-Version of the answer ("v1"/"v2"), None if absent
    instance: str | None  # X-Instance of the answer: "<container hostname>/<boot nonce>"
    session: str | None  # X-Session-State of the answer: "new" or "resumed"
    latency_ms: float | None
    error: str | None  # short error text for status 0 / 5xx, else None
    contract: NotRequired[Literal["ok", "violation"] | None]  # item answers checked by the locustfile
    unanswered: NotRequired[bool]  # still waiting when the load stopped


class LongLivedRow(TypedDict):
    """One long-lived connection (a WebSocket or an event stream) a simulated user opened or tried to,
    written when it ends by ``sandbox/load/longlived_locustfile.py``; read by ``measure``."""

    kind: str  # "ws" or "sse"
    user: str  # the simulated user (one connection at a time per user)
    conn: int  # the user's attempt number, 1 first
    rid: str  # request id of the handshake (``ll-`` and hex: not one of the load's HTTP requests)
    t: float  # unix time the attempt started
    t_open: float | None  # unix time the handshake was answered; None when the attempt failed
    t_end: float  # unix time it ended
    status: int  # the handshake's HTTP status (101, 200; 0 when no answer)
    version: str | None  # X-App-Version of the handshake
    instance: str | None  # X-Instance of the handshake
    messages: int  # numbered messages received
    first: int | None  # the first and last message numbers received
    last: int | None
    lost: int  # numbers missing below the last received (a gap in the numbering)
    duplicated: int  # numbers received more than once
    close: str  # "clean", "abnormal", "stop" (still open when the load stopped) or "failed" (never opened)
    code: str  # "1000"/"1001"/"1006"/... (WebSocket), "end"/"cut" (event stream), "stop", or the failure
    reconnect_ms: float | None  # from the end of the user's previous open connection to this one's open
    # the server's reconnect hint this connection ended with (SSE ``retry:``, or ``retry=N`` in a
    # WebSocket close reason)
    retry_ms: float | None


Phase = Literal[
    # whole-run markers
    "load-start", "rollout-start", "rollout-end", "load-stop",
    # per-server steps (DESIGN.md's six steps, plus naive/in-place variants and --detach-lag's stop signal)
    "start", "ready", "attach", "detach", "drain", "stop", "kill", "swap", "switch", "term",
    # outcomes
    "failed", "rollback-start", "rollback-end", "interrupted",
    # a server that died while attached, and the servers that then replace the dead ones
    "died", "heal-start", "heal-end",
]


class EventFields(TypedDict, total=False):
    """An event's optional fields (the keywords of ``Executor.emit``)."""

    version: str | None
    address: str | None  # container IP:port the balancer uses, for start/attach/stop
    slot: int | None
    batch: int | None
    detail: dict[str, object]  # e.g. {"duration_s": .., "in_flight": ..} for drain
    node: str  # the Swarm node that runs the server (several nodes only)


class Event(EventFields):
    t: float  # unix time
    phase: str  # one of Phase
    instance: str | None  # container name (== its hostname), None for whole-run markers

