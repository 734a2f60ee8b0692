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
* :func:`event_contract` -- "violation" for a request the user's locustfile
  marked failed although it was answered below 400.
* :func:`untracked_row` -- the row of a request known only from Locust's
  request event (a client class of the user's own).
* :func:`parse_think_ms` -- the ``--think-ms`` value ("50-200", "0").
* :class:`RowWriter` -- appends one JSON line per row with one ``write`` on an
  ``O_APPEND`` descriptor, so another process can tail the file live, a killed
  process loses no written row, and several worker processes share one file.
* :class:`Recorder` -- the in-flight registry. ``begin()`` registers a request
  when it is sent, ``answer()`` holds its answer while the user's code judges
  it, ``finish()``/``fail()`` write its row when it ends, and
  ``flush_unanswered()`` writes every request still registered when the load
  stops (status-0 ``unanswered`` rows for those with no answer). Each request
  is written exactly once: whichever of finish/fail/flush pops it from the
  registry first writes it.

The Locust side (``sandbox/load/recording.py``) wires a process-wide
:class:`Recorder` to Locust's HTTP clients, its request event and its stop
events.
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
from typing import Literal, cast

from sandbox.results.records import RequestRow

log = logging.getLogger("sandbox.load.run")

ToyVersion = Literal["v1", "v2"]  # the built-in toy app's, whose contract the default users check
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
REQUIRED_KEYS: dict[tuple[ToyVersion, V2Mode], frozenset[str]] = {
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


#: Today's think time: each user waits 50-200 ms (uniformly) between requests.
DEFAULT_THINK_MS = "50-200"


def parse_think_ms(text: str | float | int) -> tuple[float, float]:
    """``"MIN-MAX"`` or ``"N"`` milliseconds -> (min, max) in seconds.

    Raises ValueError with a short reason for anything else (negative,
    min above max, not a number, above 60,000 ms).
    """
    raw = str(text).strip()
    low_s, sep, high_s = raw.partition("-")
    try:
        low = float(low_s)
        high = float(high_s) if sep else low
    except ValueError:
        raise ValueError(f"{raw!r} must be milliseconds: N or MIN-MAX, e.g. 50-200 or 0") from None
    if not (0 <= low <= high <= 60_000):  # also rejects NaN
        raise ValueError(f"{raw!r} must be 0 <= MIN <= MAX <= 60000 milliseconds")
    return low / 1000.0, high / 1000.0


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


def check_contract(body: object, expects: ToyVersion, v2_mode: V2Mode) -> Contract:
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
    done.update({
        "t_end": t_end,
        "status": status,
        "version": fields.version,
        "instance": fields.instance,
        "session": fields.session,
        "latency_ms": round(latency_ms, 3),
        "error": error_text(status, exc),
        "contract": contract,
        "unanswered": False,
    })
    return done


def event_contract(status: int, failed_by_user: bool) -> Contract | None:
    """The ``contract`` of a request a locustfile judged itself.

    A request the user's code marked failed (``catch_response`` then
    ``response.failure(...)``) although the server answered below 400 broke the
    user's contract: "violation". Anything else is not judged here (None).
    """
    return "violation" if failed_by_user and 0 < status < 400 else None


def untracked_row(
    *,
    t_end: float,
    latency_ms: float | None,
    start_time: float | None,
    user: str,
    method: str,
    name: str,
    status: int,
    headers: Mapping[str, str] | None = None,
    exc: BaseException | None = None,
    contract: Contract | None = None,
) -> RequestRow:
    """The row of a request reported only by its request event (a client of the user's own).

    Its send time is the event's ``start_time`` (or the answer's time minus
    the latency); its ``rid`` is the answer's ``X-Request-ID`` (NGINX echoes
    the id it logged), "" when there is none.
    """
    latency = max(0.0, float(latency_ms or 0.0))
    t = float(start_time) if start_time else t_end - latency / 1000.0
    rid = _header(headers, "X-Request-ID") or ""
    done = complete_row(
        new_row(t=t, user=user, rid=rid, method=method, name=name),
        t_end=t_end,
        latency_ms=latency,
        status=status,
        headers=headers if status else None,
        exc=exc,
        contract=contract,
    )
    return done


def unanswered_row(row: RequestRow) -> RequestRow:
    """A copy of ``row`` for a request still waiting when the load stopped."""
    done = RequestRow(**row)
    done.update({
        "t_end": None,
        "status": 0,
        "latency_ms": None,
        "error": UNANSWERED_ERROR,
        "contract": None,
        "unanswered": True,
    })
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
            rows.append(cast(RequestRow, value))  # trusted: these lines were written by dump_row
        else:
            log.warning("skipping a request row that is not an object: %.120s", text)
    return rows


# --------------------------------------------------------------------------- counts


def count_path(rows_path: Path, pid: int) -> Path:
    """Where the Locust process ``pid`` writes its count of ``rows_path``'s rows."""
    return rows_path.with_name(f"{rows_path.name}.count.{pid}")


def read_counts(rows_path: Path) -> dict[str, int] | None:
    """The Locust processes' counts summed (``sent``, ``written``), removing their files; None when
    no process left one (it was killed before it could)."""
    total = {"sent": 0, "written": 0}
    found = False
    for path in sorted(rows_path.parent.glob(f"{rows_path.name}.count.*")):
        if path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            continue
        try:
            data = json.loads(path.read_text())
            total = {k: total[k] + int(data[k]) for k in total}
            found = True
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable request count %s", path)
        path.unlink(missing_ok=True)
    return total if found else None


# --------------------------------------------------------------------------- writing


class RowWriter:
    """Appends rows as JSON lines to ``path``: one ``os.write`` of a whole line per row.

    The file is opened with ``O_APPEND`` and written without a user-space
    buffer, so a row is in the file (the kernel's page cache) as soon as
    :meth:`write` returns: a Locust process killed afterwards loses no row.
    Several processes (Locust's workers) may append to the same file: each row
    is one ``write`` on an ``O_APPEND`` descriptor, which Linux does not
    interleave with another process's write to a regular file.

    ``path=None`` makes a writer that drops rows (for a locustfile run by hand
    without ``ROLLING_SANDBOX_ROWS``). The file is opened on the first row, so
    a process that forks before writing gets its own descriptor.
    """

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path else None
        self._fd: int | None = None
        self._pid = 0
        self.written = 0

    def write(self, row: RequestRow) -> None:
        self.write_line(dump_row(row))

    def write_line(self, line: str) -> None:
        """Append one line (a JSON object without its line end), as :meth:`write` does a row."""
        if self.path is None:
            return
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        data = (line + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # only on a full disk or a signal; finish the line
            written += os.write(self._fd, data[written:])
        self.written += 1

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


@dataclass
class _Entry:
    row: RequestRow  # as sent (no answer yet)
    started: float  # perf counter when sent
    answered: RequestRow | None = None  # the answer, held until its request event


@dataclass
class Recorder:
    """The in-flight registry: every request started is written exactly once.

    A request goes ``begin`` -> (``answer``) -> ``finish``; ``answer`` holds
    the answer of a request whose outcome the user's code still decides (a
    ``catch_response`` block), so that a stop in between writes it as answered,
    not as unanswered. ``clock`` gives unix time (``time.time``); latency is
    measured with ``perf`` between :meth:`begin` and the answer.
    """

    writer: RowWriter
    clock: Callable[[], float] = time.time
    perf: Callable[[], float] = time.perf_counter
    sent: int = 0  # requests begun or recorded: each owes the file one row
    _in_flight: dict[int, _Entry] = field(default_factory=dict)
    _next: int = 0

    @property
    def in_flight(self) -> int:
        """Requests registered and not yet written (answered-but-held included)."""
        return len(self._in_flight)

    def begin(self, *, user: str, rid: str, method: str, name: str) -> int:
        """Register a request about to be sent; returns its token."""
        self._next += 1
        self.sent += 1
        token = self._next
        row = new_row(t=self.clock(), user=user, rid=rid, method=method, name=name)
        self._in_flight[token] = _Entry(row, self.perf())
        return token

    def answer(
        self,
        token: int,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        exc: BaseException | None = None,
    ) -> RequestRow | None:
        """Note the answer of a request whose row :meth:`finish` writes later.

        The first answer counts (its time is the answer's time). Returns the
        held row, or None when the request was already written.
        """
        entry = self._in_flight.get(token)
        if entry is None:
            return None
        if entry.answered is None:
            entry.answered = self._complete(entry, status=status, headers=headers, exc=exc)
        return entry.answered

    def finish(
        self,
        token: int,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        exc: BaseException | None = None,
        contract: Contract | None = None,
    ) -> RequestRow | None:
        """Write the row of an answered (or failed) request.

        Uses the answer held by :meth:`answer` when there is one (``status``,
        ``headers`` and ``exc`` are then ignored), else the given ones
        (``status`` None = 0). Returns the row, or None when the request was
        already written (for example as unanswered at stop): never twice.
        """
        entry = self._in_flight.pop(token, None)
        if entry is None:
            return None
        done = entry.answered or self._complete(entry, status=status or 0, headers=headers, exc=exc)
        if contract is not None:
            done = RequestRow(**done)
            done["contract"] = contract
        self._write(done)
        return done

    def fail(self, token: int, exc: BaseException) -> RequestRow | None:
        """Write the row of a request that raised instead of answering (status 0)."""
        entry = self._in_flight.get(token)
        if entry is not None and entry.answered is not None:
            return self.finish(token)  # it was answered; the error came after
        return self.finish(token, status=0, exc=exc)

    def record(self, row: RequestRow) -> RequestRow:
        """Write a complete row of a request the registry never saw (a custom client)."""
        self.sent += 1
        self._write(row)
        return row

    def write_count(self) -> None:
        """Write this process's count (requests sent, rows written) beside the rows file, for
        :func:`read_counts`; at exit, once every row is written."""
        if self.writer.path is None:
            return
        path = count_path(self.writer.path, os.getpid())
        temporary = path.with_name(path.name + ".tmp")
        try:
            temporary.write_text(json.dumps({"sent": self.sent, "written": self.writer.written}))
            os.replace(temporary, path)
        except OSError:
            log.exception("could not write the request count to %s", path)

    def flush_unanswered(self) -> list[RequestRow]:
        """Write every request still registered; empties the registry.

        A request with a held answer is written as answered; the others get an
        ``unanswered`` row.
        """
        rows: list[RequestRow] = []
        while self._in_flight:
            token = next(iter(self._in_flight))
            entry = self._in_flight.pop(token)
            done = entry.answered or unanswered_row(entry.row)
            self._write(done)
            rows.append(done)
        unanswered = sum(1 for r in rows if r.get("unanswered"))
        if unanswered:
            log.info("recorded %d request(s) unanswered at stop", unanswered)
        return rows

    def _complete(
        self,
        entry: _Entry,
        *,
        status: int,
        headers: Mapping[str, str] | None,
        exc: BaseException | None,
    ) -> RequestRow:
        return complete_row(
            entry.row,
            t_end=self.clock(),
            latency_ms=(self.perf() - entry.started) * 1000.0,
            status=status,
            headers=headers,
            exc=exc,
        )

    def _write(self, row: RequestRow) -> None:
        try:
            self.writer.write(row)
        except OSError:
            log.exception("could not write a request row to %s", self.writer.path)
