"""Users that hold a WebSocket or an event stream open: ``--ws-users N`` / ``--sse-users N``.

Loaded by ``sandbox/load/run.py`` next to the HTTP users' locustfile when either count is above 0
(Locust runs on the host, in its own process: this module imports locust, gevent and
websocket-client; never import it from the controller or from pytest). Each class has Locust's
``fixed_count`` from the environment, so exactly N of each run beside the HTTP users.

A user connects (``GET /ws`` with an upgrade, or ``GET /events`` with ``Accept:
text/event-stream``), counts the server's numbered messages (:class:`~sandbox.load.longlived.MessageTally`),
and when the connection ends writes its row (:class:`~sandbox.results.records.LongLivedRow`) to
``ROLLING_SANDBOX_LONG_LIVED_ROWS``, then reconnects as a well-behaved client does: after a random
wait below the server's hint (SSE ``retry:``, or ``retry=N`` in a WebSocket close's reason; 1 s
when there is none),
doubled per failed attempt in a row (:func:`~sandbox.load.longlived.backoff_ms`). When the load
stops, the user closes its connection itself (a ``stop`` row) and does not reconnect.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
import requests
import websocket
from locust import User, constant, task
from locust.env import Environment

from sandbox.load import recording
from sandbox.load.longlived import (
    ABNORMAL_WS_CODE,
    DEFAULT_SSE_PATH,
    DEFAULT_WS_PATH,
    ENV_LONG_LIVED_ROWS,
    ENV_SSE_PATH,
    ENV_SSE_USERS,
    ENV_WS_PATH,
    ENV_WS_USERS,
    SSE_CUT,
    SSE_END,
    STOP,
    CloseKind,
    Kind,
    MessageTally,
    SseParser,
    backoff_ms,
    connection_row,
    dump_long_lived_row,
    env_users,
    message_number,
    new_long_lived_rid,
    reason_retry_ms,
    ws_close,
    ws_close_kind,
)
from sandbox.load.rows import RowWriter, answer_fields, exception_name

log = logging.getLogger("sandbox.load.run")

WRITER = RowWriter(os.environ.get(ENV_LONG_LIVED_ROWS) or None)
TIMEOUT_S = recording.TIMEOUT_S  # connect, and the longest silence on an open connection


def _stopping() -> bool:
    return recording._state.stopping or recording._state.quitting


@dataclass
class _Attempt:
    """One connection attempt, as its row will say."""

    kind: Kind
    user: str
    conn: int
    rid: str = field(default_factory=new_long_lived_rid)
    t: float = field(default_factory=time.time)
    t_open: float | None = None
    status: int = 0
    version: str | None = None
    instance: str | None = None
    tally: MessageTally = field(default_factory=MessageTally)
    close: CloseKind = "failed"
    code: str = ""
    retry_ms: float | None = None

    def opened(self, status: int, headers: Any) -> None:
        self.t_open, self.status = time.time(), status
        fields = answer_fields(headers)
        self.version, self.instance = fields.version, fields.instance

    def failed(self, exc: BaseException) -> None:
        status = int(getattr(exc, "status_code", 0) or 0)
        if self.t_open is None:
            self.close, self.code, self.status = "failed", f"HTTP {status}" if status else exception_name(exc), status
        else:
            self.close, self.code = "abnormal", str(ABNORMAL_WS_CODE) if self.kind == "ws" else SSE_CUT


class _LongLivedUser(User):
    abstract = True
    wait_time = constant(0)
    kind: Kind = "ws"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.sandbox_conn = 0
        self.sandbox_previous_end: float | None = None  # when the last open connection ended
        self.sandbox_failures = 0  # failed attempts in a row

    @task
    def hold(self) -> None:
        while not _stopping():
            attempt = _Attempt(self.kind, recording.user_id(self), self.sandbox_conn + 1)
            self.sandbox_conn += 1
            try:
                self.connect(attempt)
            except gevent.GreenletExit:
                attempt.close, attempt.code = "stop", STOP
                raise
            except Exception as exc:
                attempt.failed(exc)
            finally:
                self._write(attempt)
            if attempt.close == "stop" or _stopping():
                return
            self.sandbox_failures = 0 if attempt.t_open is not None else self.sandbox_failures + 1
            gevent.sleep(backoff_ms(self.sandbox_failures, attempt.retry_ms) / 1000.0)

    def connect(self, attempt: _Attempt) -> None:
        raise NotImplementedError

    def _write(self, attempt: _Attempt) -> None:
        t_end = time.time()
        row = connection_row(
            kind=attempt.kind, user=attempt.user, conn=attempt.conn, rid=attempt.rid, t=attempt.t,
            t_open=attempt.t_open, t_end=t_end, status=attempt.status, version=attempt.version,
            instance=attempt.instance, tally=attempt.tally, close=attempt.close, code=attempt.code,
            previous_end=self.sandbox_previous_end, retry_ms=attempt.retry_ms,
        )  # fmt: skip
        if attempt.t_open is not None:
            self.sandbox_previous_end = t_end
        try:
            WRITER.write_line(dump_long_lived_row(row))
        except OSError:
            log.exception("could not write a long-lived connection row to %s", WRITER.path)


class WebSocketUser(_LongLivedUser):
    """Holds a WebSocket to ``ROLLING_SANDBOX_WS_PATH`` (default /ws) and counts its ``tick`` messages."""

    fixed_count = env_users(ENV_WS_USERS)
    abstract = fixed_count == 0
    kind: Kind = "ws"
    path = os.environ.get(ENV_WS_PATH) or DEFAULT_WS_PATH

    def connect(self, attempt: _Attempt) -> None:
        url = "ws" + (self.host or "").removeprefix("http") + self.path
        ws = websocket.create_connection(url, timeout=TIMEOUT_S, header=[f"X-Request-ID: {attempt.rid}"])
        try:
            attempt.opened(ws.getstatus() or 101, ws.getheaders())
            while not _stopping():
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code, reason = ws_close(data)
                    attempt.close, attempt.code = ws_close_kind(code), str(code)
                    attempt.retry_ms = reason_retry_ms(reason)
                    return
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    number = message_number(data)
                    if number is not None:
                        attempt.tally.see(number)
            attempt.close, attempt.code = "stop", STOP
        finally:
            ws.close(timeout=1)


class EventStreamUser(_LongLivedUser):
    """Holds an event stream from ``ROLLING_SANDBOX_SSE_PATH`` (default /events) and counts its ticks."""

    fixed_count = env_users(ENV_SSE_USERS)
    abstract = fixed_count == 0
    kind: Kind = "sse"
    path = os.environ.get(ENV_SSE_PATH) or DEFAULT_SSE_PATH

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.sandbox_session = requests.Session()

    def connect(self, attempt: _Attempt) -> None:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", "X-Request-ID": attempt.rid}
        with self.sandbox_session.get((self.host or "") + self.path, headers=headers, stream=True,
                                      timeout=(TIMEOUT_S, TIMEOUT_S)) as response:
            if response.status_code != 200:
                attempt.status = response.status_code
                attempt.close, attempt.code = "failed", f"HTTP {response.status_code}"
                return
            attempt.opened(response.status_code, response.headers)
            parser = SseParser()
            ended_well = False
            for line in response.iter_lines(decode_unicode=True):
                event = parser.feed(line)
                if event is None:
                    continue
                if event.retry_ms is not None:
                    attempt.retry_ms = event.retry_ms
                    ended_well = True  # the server's goodbye: it tells when to come back
                number = message_number(event.data) if event.event == "tick" else None
                if number is not None:
                    attempt.tally.see(number)
                if _stopping():
                    attempt.close, attempt.code = "stop", STOP
                    return
            attempt.close, attempt.code = ("clean", SSE_END) if ended_well else ("abnormal", SSE_CUT)
