"""The pure half of the long-lived users: message numbering, close kinds, reconnect delays, rows.

No import of locust, gevent or websocket-client: unit-tested in the pytest process. The users
themselves (``sandbox/load/longlived_locustfile.py``) hold a WebSocket or an event stream open,
count each numbered message with a :class:`MessageTally`, and write one
:class:`~sandbox.results.records.LongLivedRow` per connection when it ends.

* :class:`MessageTally` -- the messages of one connection, numbered 1, 2, 3... by the server:
  how many arrived, which numbers are missing below the last one (lost) and which came twice.
* :func:`backoff_ms` -- how long a well-behaved client waits before it reconnects: "full jitter"
  (uniform between 0 and a bound), the bound being the server's hint (SSE ``retry:``) or
  :data:`DEFAULT_RETRY_MS`, doubled per failed attempt in a row up to :data:`MAX_BACKOFF_MS`; so
  a fleet that closes every connection at once sees the reconnects spread over the hint's window.
* :class:`SseParser` -- server-sent events from lines (``event:``, ``data:``, ``id:``, ``retry:``).
* :func:`ws_close` -- the code and reason of a WebSocket close frame's payload;
  :func:`reason_retry_ms` -- the reconnect hint in that reason (``retry=N``, as the toy app sends).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from sandbox.results.records import LongLivedRow

Kind = Literal["ws", "sse"]
CloseKind = Literal["clean", "abnormal", "stop", "failed"]

ENV_WS_USERS = "ROLLING_SANDBOX_WS_USERS"
ENV_SSE_USERS = "ROLLING_SANDBOX_SSE_USERS"
ENV_LONG_LIVED_ROWS = "ROLLING_SANDBOX_LONG_LIVED_ROWS"
ENV_WS_PATH = "ROLLING_SANDBOX_WS_PATH"
ENV_SSE_PATH = "ROLLING_SANDBOX_SSE_PATH"
DEFAULT_WS_PATH = "/ws"
DEFAULT_SSE_PATH = "/events"

#: WebSocket close codes a server sends when it ends a connection on purpose: normal (1000),
#: going away (1001), service restart (1012), try again later (1013). Any other code, or none
#: (the connection dropped: 1006), is abnormal.
CLEAN_WS_CODES = frozenset({1000, 1001, 1012, 1013})
ABNORMAL_WS_CODE = 1006
SSE_END = "end"  # the stream ended after the server's goodbye (an event with ``retry:``)
SSE_CUT = "cut"  # the stream ended (or broke) without it
STOP = "stop"
#: The reconnect bound when the server gives no hint (a WebSocket close without ``retry=N`` in
#: its reason); the toy app's default hint (``APP_RECONNECT_MS``) is the same 1000 ms.
DEFAULT_RETRY_MS = 1000.0
MAX_BACKOFF_MS = 10_000.0
LONG_LIVED_RID_PREFIX = "ll-"


@dataclass
class MessageTally:
    """The numbered messages of one connection (numbers start at 1)."""

    seen: set[int] = field(default_factory=set)
    received: int = 0
    duplicated: int = 0
    first: int | None = None
    last: int | None = None

    def see(self, number: int) -> None:
        self.received += 1
        if number in self.seen:
            self.duplicated += 1
            return
        self.seen.add(number)
        if self.first is None:
            self.first = number
        self.last = number if self.last is None else max(self.last, number)

    @property
    def lost(self) -> int:
        """Numbers from 1 to the highest received that never arrived."""
        return 0 if self.last is None else self.last - len(self.seen)


def message_number(text: str | bytes) -> int | None:
    """The ``tick`` number of a toy app message (``{"tick": n, ...}``); None for anything else."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    tick = value.get("tick") if isinstance(value, dict) else None
    return tick if isinstance(tick, int) and not isinstance(tick, bool) and tick > 0 else None


def backoff_ms(failures: int, hint_ms: float | None, rand: Callable[[], float] = random.random) -> float:
    """The wait before the next connection attempt: uniform in [0, bound), the bound being the
    server's hint (else :data:`DEFAULT_RETRY_MS`) times 2 per failed attempt in a row, at most
    :data:`MAX_BACKOFF_MS`."""
    base = hint_ms if hint_ms is not None and hint_ms >= 0 else DEFAULT_RETRY_MS
    bound = min(MAX_BACKOFF_MS, base * 2.0 ** max(0, min(failures, 16)))
    return rand() * bound


def ws_close(payload: bytes | None) -> tuple[int, str]:
    """A close frame's code and reason; a frame with no code is 1005 ("no status received")."""
    if not payload or len(payload) < 2:
        return 1005, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


_RETRY_IN_REASON = re.compile(r"(?:^|[\s,;])retry=(\d{1,9})(?:$|[\s,;])")


def reason_retry_ms(reason: str) -> float | None:
    """The reconnect hint a WebSocket close reason carries as ``retry=N`` (ms), e.g. the toy
    app's ``retry=500``; None when it carries none (the client then waits as without a hint)."""
    match = _RETRY_IN_REASON.search(reason)
    return None if match is None else float(match.group(1))


def ws_close_kind(code: int) -> CloseKind:
    return "clean" if code in CLEAN_WS_CODES else "abnormal"


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: float | None = None


class SseParser:
    """Server-sent events from the stream's lines (without their line ends), one at a time."""

    def __init__(self) -> None:
        self._event = SseEvent()
        self._data: list[str] = []
        self._any = False

    def feed(self, line: str) -> SseEvent | None:
        """The event a blank line completes, else None."""
        if line == "":
            if not self._any:
                return None
            done = self._event
            done.data = "\n".join(self._data)
            self._event, self._data, self._any = SseEvent(), [], False
            return done
        if line.startswith(":"):
            return None  # a comment
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        self._any = True
        if name == "event":
            self._event.event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._event.id = value
        elif name == "retry" and value.isdigit():
            self._event.retry_ms = float(value)
        return None


def new_long_lived_rid() -> str:
    return LONG_LIVED_RID_PREFIX + os.urandom(16).hex()


def env_users(name: str, environ: dict[str, str] | None = None) -> int:
    """A user count from the environment: a whole number >= 0, else 0."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    return int(raw) if raw.isdigit() else 0


def connection_row(
    *,
    kind: Kind,
    user: str,
    conn: int,
    rid: str,
    t: float,
    t_open: float | None,
    t_end: float,
    status: int,
    version: str | None,
    instance: str | None,
    tally: MessageTally,
    close: CloseKind,
    code: str,
    previous_end: float | None,
    retry_ms: float | None,
) -> LongLivedRow:
    """The row of one connection when it ends; ``previous_end`` is when the user's previous open
    connection ended (None for its first), from which ``reconnect_ms`` is measured."""
    reconnect = None if previous_end is None or t_open is None else round(max(0.0, t_open - previous_end) * 1000, 3)
    return LongLivedRow(
        kind=kind, user=user, conn=conn, rid=rid, t=t, t_open=t_open, t_end=t_end, status=status,
        version=version, instance=instance, messages=tally.received, first=tally.first, last=tally.last,
        lost=tally.lost, duplicated=tally.duplicated, close=close, code=code, reconnect_ms=reconnect,
        retry_ms=retry_ms,
    )  # fmt: skip


def parse_long_lived_rows(lines: list[bytes] | list[str]) -> list[LongLivedRow]:
    """Rows from JSON lines; blank, malformed and foreign lines are skipped."""
    rows: list[LongLivedRow] = []
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        try:
            value = json.loads(text) if text.strip() else None
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("kind") in ("ws", "sse"):
            rows.append(cast(LongLivedRow, value))  # trusted: written by dump_long_lived_row
    return rows


def dump_long_lived_row(row: LongLivedRow) -> str:
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
