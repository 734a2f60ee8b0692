"""NGINX's JSON access log (``log_format sandbox_json`` in ``lb/nginx.conf.j2``), read in one place.

:func:`parse` turns the log's text into :class:`~sandbox.fleet.loadbalancer.LbRow`; the server
that answered is the last address of ``$upstream_addr`` (NGINX lists every server it tried).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from sandbox.fleet.loadbalancer import LbRow

_UPSTREAM_SPLIT = re.compile(r"\s*,\s*|\s+:\s+")
"""NGINX separates retried servers with ", " and upstream groups with " : "."""


class NginxRow(TypedDict):
    """One line of the log as NGINX writes it."""

    time: float  # unix time (msec precision) the request finished
    rid: str  # request id ($http_x_request_id, or generated)
    method: str
    uri: str
    status: int
    upstream_addr: str  # "10.1.0.5:8000", or "a:8000, b:8000" when NGINX retried, or "" / "-"
    upstream_status: str  # "200", or "502, 200" on retry
    request_time: float
    upstream_response_time: str
    route: str  # the version asked by header X-Sandbox-Version or cookie sandbox_version, "" when none


def upstream_addresses(upstream_addr: str | None) -> list[str]:
    """The servers NGINX tried for one request, in order ("-" and "" dropped)."""
    if not upstream_addr:
        return []
    parts = _UPSTREAM_SPLIT.split(upstream_addr.strip())
    return [p for p in (part.strip() for part in parts) if p and p != "-"]


def to_row(raw: Mapping[str, Any]) -> LbRow:
    """One decoded log line as the neutral row (missing fields: 0 and empty; ``route`` only when
    the request named a version)."""
    row: LbRow = {"time": float(raw.get("time") or 0.0), "rid": str(raw.get("rid") or ""),
                  "status": int(raw.get("status") or 0), "servers": upstream_addresses(raw.get("upstream_addr"))}
    if raw.get("route"):
        row["route"] = str(raw["route"])
    return row


def parse(text: str) -> list[LbRow]:
    """Every line of the log that decodes as JSON, as neutral rows (other lines are skipped)."""
    rows: list[LbRow] = []
    for line in text.splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict):
            rows.append(to_row(raw))
    return rows
