"""The load-balancer seam: what the controller, the rehearsal and the measurement ask of it.

:class:`LoadBalancer` is a ``typing.Protocol``; :class:`~sandbox.fleet.balancer.NginxBalancer`
implements it in both its apply modes (``dynamic``: the set changes with no reload; ``reload``:
a new config and a graceful reload per change), the test fakes too. The types crossing it are
neutral: an attached server is an :class:`Upstream`, the live state an :class:`LbState`, and an
access-log line an :class:`LbRow`, whose server attribution the LB itself decides (NGINX's
format is read in :mod:`sandbox.fleet.nginx_log` only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, NotRequired, Protocol, TypedDict

from sandbox.fleet.engine import Instance

ROUTE_HEADER = "X-Sandbox-Version"
"""Header routing: a request with this header (or, without it, the cookie ``ROUTE_COOKIE``) naming a
version goes to an attached server of that version, or gets 503 naming it when none is attached;
the LB's log gives the version asked (``LbRow["route"]``)."""
ROUTE_COOKIE = "sandbox_version"


@dataclass(frozen=True)
class Upstream:
    """One attached server."""

    name: str
    address: str  # ip:port
    version: str


@dataclass
class LbState:
    """What the live load balancer says: the attached servers and the rollout in progress, if any."""

    generation: int = 0
    size: int = 0  # the fleet's declared size (number of slots)
    upstreams: list[Upstream] = field(default_factory=list)
    rollout: dict[str, Any] | None = None  # {"from": "v1", "to": "v2", "strategy": ...}
    sticky: bool = False
    client_keepalive_s: int = 0
    read_timeout_s: int = 30  # NGINX's proxy_read_timeout: longer than the load's client timeout (up and roll set it)
    upstream_keepalive_s: int = 30  # how long NGINX keeps an idle connection to a server (doctor lowers it)
    retry: bool = False  # retry a failed request on the next server (NGINX's default) or not
    app_env: dict[str, str] = field(default_factory=dict)  # `up --env`: every server of this fleet gets it
    lb_apply: str = "reload"  # "reload" or "dynamic" (a state without the field is a reload one)
    # --strategy canary: {"version", "weight" (percent of requests to that version's servers), "sticky"};
    # dynamic mode only (PUT /canary); None: every attached server alike
    canary: dict[str, Any] | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if data["canary"] is None:  # no canary: the state (and a config rendered from it) as before canaries
            del data["canary"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LbState:
        data = json.loads(text)
        data["upstreams"] = [Upstream(**u) for u in data.get("upstreams", [])]
        return cls(**data)


class LbRow(TypedDict):
    """One request the load balancer answered, as its access log tells it."""

    time: float  # unix time the request finished
    rid: str  # request id (X-Request-ID), "" when none
    status: int  # the status the client got
    servers: list[str]  # the ``ip:port`` of each server tried, in order: the last one answered
    route: NotRequired[str]  # the version the request asked for (header routing); absent when none


class LoadBalancer(Protocol):
    """The project's load balancer: its attached set, its state, its in-flight counts and its log."""

    project: str
    state: LbState  # as last loaded or applied
    lost: bool  # load() found no attached set (restarted or recreated): repair_lost_set before rolling

    @property
    def url(self) -> str:
        """Where clients reach the fleet."""
        ...

    @property
    def dynamic(self) -> bool:
        """Whether it counts in-flight requests per server (``in_flight`` answers)."""
        ...

    async def load(self) -> LbState:
        """Read the live state back (a fresh process knows what the LB serves); when the LB lost it,
        the fleet's facts (size, app environment, settings, last rollout) from the controller's record."""
        ...

    async def apply(self, upstreams: list[Upstream], **changes: Any) -> LbState:
        """Make ``upstreams`` exactly the attached set; ``changes`` set other LbState fields.
        All or nothing: BalancerError leaves the live set as it was. Compare-and-set: BalancerConflict
        when another writer changed the LB since this one last read or wrote it."""
        ...

    async def repair_lost_set(self, instances: list[Instance], size: int) -> list[Upstream]:
        """Attach, per slot, the oldest running instance, after ``load`` found the set lost."""
        ...

    async def in_flight(self) -> dict[str, int]:
        """Requests in flight now per server address (``dynamic`` only)."""
        ...

    async def long_lived(self) -> dict[str, int]:
        """Open long-lived connections (WebSocket, event stream) now per server address (``dynamic`` only)."""
        ...

    def forget_container(self) -> None:
        """Find the load balancer afresh on the next call: it was started again (it may have a new address)."""
        ...

    async def access_log(self) -> list[LbRow]:
        """Every request answered so far, oldest first."""
        ...
