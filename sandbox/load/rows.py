"""The pure half of the load recorder: contracts, rows, the in-flight registry.

Everything the Locust process needs to turn a request into a
:class:`~sandbox.results.records.RequestRow` lives here, with **no import of locust or
gevent**, so it can be unit-tested in the pytest process and imported by a
user's own locustfile without side effects.

* :func:`check_contract` -- does an item answer satisfy the API contract the
  user expects ("v1" or "v2"), given the v2 mode ("compatible" / "breaking")?
* :func:`answer_fields` -- the version / instance / session headers of an answer.
* :func:`error_text` -- a short error name ("ConnectionResetError", "ReadTimeout",
  "HTTP 502") for a status-0 or 5xx answer.
* :class:`RowWriter` -- appends one JSON line per row, flushed per row, so
  another process can tail the file live.
* :class:`Recorder` -- the in-flight registry. ``begin()`` registers a request
  when it is sent, ``finish()``/``fail()`` write its row when it ends, and
  ``flush_unanswered()`` writes a status-0 ``unanswered`` row for every request
  still waiting when the load stops. Each request is written exactly once:
  whichever of finish/fail/flush pops it from the registry first writes it.

The Locust side (``sandbox/load/locustfile.py``) wires a process-wide
:class:`Recorder` to Locust's HTTP session and its stop events.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from sandbox.results.records import RequestRow

log = logging.getLogger("sandbox.load.run")

Version = Literal["v1", "v2"]
V2Mode = Literal["compatible", "breaking"]
Contract = Literal["ok", "violation"]

#: Environment variables shared by the controller side (``sandbox/load/run.py``)
#: and the Locust side. Kept here so both agree on the names.
ENV_ROWS = "ROLLING_SANDBOX_ROWS"
ENV_READY = "ROLLING_SANDBOX_READY"
ENV_V2_MODE = "ROLLING_SANDBOX_V2_MODE"
ENV_TIMEOUT = "ROLLING_SANDBOX_TIMEOUT"
ENV_WAIT_MIN = "ROLLING_SANDBOX_WAIT_MIN"
ENV_WAIT_MAX = "ROLLING_SANDBOX_WAIT_MAX"
ENV_PARENT_PID = "ROLLING_SANDBOX_PARENT_PID"

UNANSWERED_ERROR = "unanswered at stop"

#: Keys an item answer must have, by (version the user expects, v2 mode).
REQUIRED_KEYS: dict[tuple[Version, V2Mode], frozenset[str]] = {
    ("v1", "compatible"): frozenset({"id", "name", "price"}),
    ("v1", "breaking"): frozenset({"id", "name", "price"}),
    ("v2", "compatible"): frozenset({"id", "name", "price"}),  # currency is an optional addition
    ("v2", "breaking"): frozenset({"id", "title", "price"}),
}

#: Every key of a RequestRow, in the order rows are written.
ROW_KEYS: tuple[str, ...] = (
    "t", "t_end", "user", "rid", "method", "name", "status", "version", "instance",
    "session", "latency_ms", "error", "contract", "unanswered",
)  # fmt: skip


# --------------------------------------------------------------------------- settings


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A positive-or-zero float from the environment; ``default`` when unset or bad."""
    env = os.environ if environ is None else environ
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    if value < 0 or value != value:  # negative or NaN
        log.warning("%s=%r must be >= 0; using %s", name, raw, default)
        return default
    return value


def v2_mode_from_env(environ: Mapping[str, str] | None = None) -> V2Mode:
    """``ROLLING_SANDBOX_V2_MODE``: "compatible" (default) or "breaking"."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_V2_MODE, "").strip().lower() or "compatible"
    if raw == "breaking":
        return "breaking"
    if raw != "compatible":
        log.warning("%s=%r is not compatible/breaking; using compatible", ENV_V2_MODE, raw)
    return "compatible"


# --------------------------------------------------------------------------- contract


def check_contract(body: object, expects: Version, v2_mode: V2Mode) -> Contract:
    """Whether an item answer's JSON ``body`` has the keys the user's client expects.

    ``expects`` is "v2" once the user has received any v2 answer, else "v1".
    Extra keys never violate a contract (an added field is compatible); a body
    that is not a JSON object always does.
    """
    if not isinstance(body, dict):
        return "violation"
    required = REQUIRED_KEYS[(expects, v2_mode)]
    return "ok" if required <= body.keys() else "violation"


def parse_json(raw: bytes | str | None) -> object:
    """The JSON value of a body, or None when it is empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def is_success(status: int) -> bool:
    return 200 <= status < 300


# --------------------------------------------------------------------------- answers


def _header(headers: Mapping[str, str] | None, key: str) -> str | None:
    if not headers:
        return None
    value = headers.get(key)
    if value is None:  # plain dicts are case-sensitive; requests' headers are not
        lower = key.lower()
        for k, v in headers.items():
            if k.lower() == lower:
                value = v
                break
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(frozen=True)
class AnswerFields:
    version: str | None
    instance: str | None
    session: str | None


def answer_fields(headers: Mapping[str, str] | None) -> AnswerFields:
    """X-App-Version, X-Instance and X-Session-State of an answer (None when absent)."""
    return AnswerFields(
        version=_header(headers, "X-App-Version"),
        instance=_header(headers, "X-Instance"),
        session=_header(headers, "X-Session-State"),
    )


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (``reason``, exception args, causes), depth first."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        inner: list[BaseException] = []
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            inner.append(reason)
        inner.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
        if cur.__cause__ is not None:
            inner.append(cur.__cause__)
        elif cur.__context__ is not None and not cur.__suppress_context__:
            inner.append(cur.__context__)
        stack.extend(reversed(inner))


def exception_name(exc: BaseException) -> str:
    """A short name for a client-side failure.

    Timeouts keep their outer name ("ReadTimeout", "ConnectTimeout"), other
    errors are named after the innermost standard-library exception they wrap
    ("ConnectionResetError", "ConnectionRefusedError", "RemoteDisconnected"),
    falling back to the outer class name.
    """
    name = type(exc).__name__
    if "Timeout" in name:
        return name
    innermost: BaseException | None = None
    for cur in _exception_chain(exc):
        builtin_os_error = type(cur).__module__ == "builtins" and isinstance(cur, OSError)
        if builtin_os_error or isinstance(cur, http.client.HTTPException):
            innermost = cur
    if innermost is not None:
        return type(innermost).__name__
    return name


def error_text(status: int, exc: BaseException | None = None) -> str | None:
    """The row's ``error``: a short text for status 0 or >= 500, else None."""
    if status == 0:
        return exception_name(exc) if exc is not None else "no answer"
    if status >= 500:
        return f"HTTP {status}"
    return None


# --------------------------------------------------------------------------- rows


def new_row(*, t: float, user: str, rid: str, method: str, name: str) -> RequestRow:
    """A row for a request just sent: no answer yet (status 0, t_end None)."""
    return RequestRow(
        t=t,
        t_end=None,
        user=user,
        rid=rid,
        method=method.upper(),
        name=name,
        status=0,
        version=None,
        instance=None,
        session=None,
        latency_ms=None,
        error=None,
        contract=None,
        unanswered=False,
    )


def complete_row(
    row: RequestRow,
    *,
    t_end: float,
    latency_ms: float,
    status: int,
    headers: Mapping[str, str] | None = None,
    exc: BaseException | None = None,
    contract: Contract | None = None,
) -> RequestRow:
    """A copy of ``row`` filled in with its answer (or its client-side error)."""
    fields = answer_fields(headers)
    done = RequestRow(**row)
    done.update(
        t_end=t_end,
        status=status,
        version=fields.version,
        instance=fields.instance,
        session=fields.session,
        latency_ms=round(latency_ms, 3),
        error=error_text(status, exc),
        contract=contract,
        unanswered=False,
    )
    return done


def unanswered_row(row: RequestRow) -> RequestRow:
    """A copy of ``row`` for a request still waiting when the load stopped."""
    done = RequestRow(**row)
    done.update(
        t_end=None,
        status=0,
        latency_ms=None,
        error=UNANSWERED_ERROR,
        contract=None,
        unanswered=True,
    )
    return done


def dump_row(row: RequestRow) -> str:
    """One JSON line (no trailing newline), keys in :data:`ROW_KEYS` order."""
    ordered = {k: row.get(k) for k in ROW_KEYS}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_rows(lines: Iterable[bytes | str]) -> list[RequestRow]:
    """Rows from JSON lines; blank and malformed lines are skipped (logged)."""
    rows: list[RequestRow] = []
    for line in lines:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            log.warning("skipping a malformed request row: %.120s", text)
            continue
        if isinstance(value, dict):
            rows.append(value)  # type: ignore[arg-type]
        else:
            log.warning("skipping a request row that is not an object: %.120s", text)
    return rows


# --------------------------------------------------------------------------- writing


class RowWriter:
    """Appends rows as JSON lines to ``path``, one ``write`` + ``flush`` per row.

    ``path=None`` makes a writer that drops rows (for a locustfile run by hand
    without ``ROLLING_SANDBOX_ROWS``). The file is opened on the first row.
    """

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path else None
        self._file: IO[str] | None = None
        self.written = 0

    def write(self, row: RequestRow) -> None:
        if self.path is None:
            return
        if self._file is None:
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._file.write(dump_row(row) + "\n")
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Recorder:
    """The in-flight registry: every request started is written exactly once.

    ``clock`` gives unix time (``time.time``); latency is measured with
    ``perf_counter`` between :meth:`begin` and :meth:`finish`.
    """

    writer: RowWriter
    clock: Callable[[], float] = time.time
    perf: Callable[[], float] = time.perf_counter
    _in_flight: dict[int, tuple[RequestRow, float]] = field(default_factory=dict)
    _next: int = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def begin(self, *, user: str, rid: str, method: str, name: str) -> int:
        """Register a request about to be sent; returns its token."""
        self._next += 1
        token = self._next
        row = new_row(t=self.clock(), user=user, rid=rid, method=method, name=name)
        self._in_flight[token] = (row, self.perf())
        return token

    def finish(
        self,
        token: int,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        exc: BaseException | None = None,
        contract: Contract | None = None,
    ) -> RequestRow | None:
        """Write the row of an answered (or failed) request.

        Returns the row, or None when the request was already written (for
        example as unanswered at stop): a request is never written twice.
        """
        entry = self._in_flight.pop(token, None)
        if entry is None:
            return None
        row, started = entry
        done = complete_row(
            row,
            t_end=self.clock(),
            latency_ms=(self.perf() - started) * 1000.0,
            status=status,
            headers=headers,
            exc=exc,
            contract=contract,
        )
        self._write(done)
        return done

    def fail(self, token: int, exc: BaseException) -> RequestRow | None:
        """Write the row of a request that raised instead of answering (status 0)."""
        return self.finish(token, status=0, exc=exc)

    def flush_unanswered(self) -> list[RequestRow]:
        """Write an ``unanswered`` row for every request still in flight; empties the registry."""
        rows: list[RequestRow] = []
        while self._in_flight:
            token = next(iter(self._in_flight))
            row, _ = self._in_flight.pop(token)
            done = unanswered_row(row)
            self._write(done)
            rows.append(done)
        if rows:
            log.info("recorded %d request(s) unanswered at stop", len(rows))
        return rows

    def _write(self, row: RequestRow) -> None:
        try:
            self.writer.write(row)
        except OSError:
            log.exception("could not write a request row to %s", self.writer.path)
