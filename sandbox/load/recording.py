"""The Locust side of the recorder: rows for every request of any user class.

Run only inside a Locust process (``sandbox/load/run.py`` passes
``sandbox/load/recorder_locustfile.py``, which imports this module, ahead of the
user's locustfile, so a locustfile needs no import of ours). It imports locust,
which monkey-patches the standard library with gevent: never import this module
from the controller or from pytest.

How a request becomes exactly one row
-------------------------------------
* Locust's two HTTP clients, ``HttpSession`` (``HttpUser``) and
  ``FastHttpSession`` (``FastHttpUser``), and every subclass of them, get their
  ``request`` method wrapped once at import: the wrapper sends an
  ``X-Request-ID`` (``ls-`` and uuid4 hex) unless the caller set one (NGINX logs it, so a
  row joins NGINX's log line), gives ``HttpSession`` requests the client
  timeout unless the caller set one, registers the request as in flight
  (:class:`~sandbox.load.rows.Recorder`) and puts its token into the request's
  Locust ``context``. If the request raises, its row is written as failed.
* Locust's ``events.request`` hook writes the row when Locust reports the
  request: at once, or at the end of the user's ``catch_response`` block (the
  answer itself was noted when the client returned, so its latency is the
  server's, and a stop inside the block records it as answered). A request the
  block marks failed although it was answered below 400 gets
  ``contract: "violation"``. Users with a ``sandbox_contract(name, response)``
  method (the default shop users, :class:`RecordedHttpUser` subclasses) judge
  the answer's contract themselves.
* A request event without a token comes from a client of the user's own
  (one that fires ``events.request`` itself): it is written from the event
  alone (rid from the answer's ``X-Request-ID``; it is never "in flight", so a
  stop cannot record it as unanswered).
* When the load stops, every request still registered is written: answered
  (held) or ``unanswered``; then the process writes its count (requests sent, rows
  written) beside the rows, so the controller can tell rows that never reached the file.

With several Locust worker processes each process has its own registry and
appends to the same rows file (one ``write`` per row); user ids carry the
worker's index (``w2-u17``) so they stay unique across workers.

Stop and death
--------------
* Locust's stop events: ``test_stopping`` sets a flag so no new request
  starts (the wrapper raises ``StopUser``); ``test_stop`` and ``quitting``
  write what is left in flight.
* ``SIGUSR1``: write what is in flight at once and exit (code 3). The
  controller sends it when Locust has not stopped by itself, before any
  SIGKILL, so the unanswered rows are never lost.
* The parent watch: a process whose parent goes away (the controller died, or
  for a worker its master was killed) stops as on SIGTERM.

Settings (environment, set by ``sandbox/load/run.py``): ``ROLLING_SANDBOX_ROWS``,
``ROLLING_SANDBOX_READY`` (a file touched when the test starts),
``ROLLING_SANDBOX_TIMEOUT`` (client timeout, s), ``ROLLING_SANDBOX_WAIT_MIN/MAX``
(think time of the default users, s), ``ROLLING_SANDBOX_V2_MODE``.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import HttpUser, between, events
from locust.clients import HttpSession
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import STATE_STOPPED, WorkerRunner

from sandbox.load.rows import (
    ENV_READY,
    ENV_ROWS,
    ENV_TIMEOUT,
    ENV_WAIT_MAX,
    ENV_WAIT_MIN,
    Contract,
    Recorder,
    RowWriter,
    answer_fields,
    env_float,
    event_contract,
    untracked_row,
)
from sandbox.results.records import new_load_rid

__all__ = ["RECORDER", "THINK_S", "TIMEOUT_S", "user_id"]

log = logging.getLogger("sandbox.load.run")

#: The process-wide in-flight registry and row file.
RECORDER = Recorder(RowWriter(os.environ.get(ENV_ROWS) or None))

TIMEOUT_S = env_float(ENV_TIMEOUT, 10.0) or 10.0
_wait_min = env_float(ENV_WAIT_MIN, 0.05)
THINK_S: tuple[float, float] = (_wait_min, max(_wait_min, env_float(ENV_WAIT_MAX, 0.2)))

#: The key of the recorder's token in a request's Locust ``context``.
CONTEXT_KEY = "sandbox_request"
#: Exit code of a Locust process ended by SIGUSR1 (rows written, then exit).
FLUSH_EXIT_CODE = 3

_user_ids = itertools.count(1)


@dataclass
class _State:
    """This process's part in the load test."""

    stopping: bool = False  # the test is stopping (reset when a new test starts)
    # this process is shutting down (never reset: Locust's master may still hand a stopping
    # worker the users of another one, and they must not start requests)
    quitting: bool = False
    prefix: str | None = None  # of its request ids, once known (see _prefix)
    environment: Environment | None = None


_state = _State()


# --------------------------------------------------------------------------- users


def _prefix() -> str:
    """``w<index>-`` in a worker process, "" in a standalone one."""
    if _state.prefix is None:
        env = _state.environment
        runner = env.runner if env is not None else None
        if isinstance(runner, WorkerRunner):
            index = getattr(runner, "worker_index", -1)
            _state.prefix = f"w{index}-" if index >= 0 else f"p{os.getpid()}-"
        else:
            return ""  # not known yet in a worker that has no index: don't cache
    return _state.prefix


def user_id(user: Any) -> str:
    """A user's row id, stable for its life and unique across worker processes."""
    if user is None:
        return f"{_prefix()}g{id(gevent.getcurrent()):x}"
    uid = getattr(user, "sandbox_id", None)
    if uid is None:
        uid = f"{_prefix()}u{next(_user_ids)}"
        try:
            user.sandbox_id = uid
        except AttributeError:
            return f"{_prefix()}g{id(user):x}"
    return str(uid)


# --------------------------------------------------------------------------- the client wrapper


class _Pending:
    """What the wrapper leaves in a request's context for the request event."""

    __slots__ = ("catch_response", "token", "user")

    def __init__(self, token: int, user: Any, catch_response: bool) -> None:
        self.token = token
        self.user = user
        self.catch_response = catch_response


class _Call:
    """One ``request(self, method, url, ...)`` call with everything after ``url`` as keywords.

    Locust's own ``get``/``post``/... pass only keywords after the URL (the
    fast path); a call with more positional arguments is bound to the
    signature once to name them.
    """

    __slots__ = ("head", "kwargs")

    def __init__(self, sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(args) <= 3:
            self.kwargs = dict(kwargs)
            method = args[1] if len(args) > 1 else self.kwargs.pop("method", "")
            url = args[2] if len(args) > 2 else self.kwargs.pop("url", "")
            self.head = (args[0], method, url)
            return
        bound = sig.bind(*args, **kwargs)
        names = list(sig.parameters)
        self.head = tuple(bound.arguments[n] for n in names[:3])
        self.kwargs = {}
        for name, param in list(sig.parameters.items())[3:]:
            if name not in bound.arguments:
                continue
            if param.kind is param.VAR_KEYWORD:
                self.kwargs.update(bound.arguments[name])
            else:
                self.kwargs[name] = bound.arguments[name]

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.kwargs[key] = value

    def text(self, index: int) -> str:
        value = self.head[index]
        return value.decode() if isinstance(value, bytes) else str(value)


def _set_request_id(call: _Call) -> str:
    headers = dict(call.get("headers") or {})
    rid = next((str(v) for k, v in headers.items() if k.lower() == "x-request-id"), None)
    if rid is None:
        rid = new_load_rid()
        headers["X-Request-ID"] = rid
    call.set("headers", headers)
    return rid


def _wrap(orig: Callable[..., Any], *, timeout_kw: bool) -> Callable[..., Any]:
    sig = inspect.signature(orig)

    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _state.stopping or _state.quitting:
            raise StopUser()
        call = _Call(sig, (self, *args), kwargs)
        rid = _set_request_id(call)
        if timeout_kw and call.get("timeout") is None:
            call.set("timeout", TIMEOUT_S)
        label = call.get("name") or getattr(self, "request_name", None) or urlsplit(call.text(2)).path or "/"
        user = getattr(self, "user", None)
        catch = bool(call.get("catch_response", False))
        token = RECORDER.begin(user=user_id(user), rid=rid, method=call.text(1), name=str(label))
        call.set("context", {**(call.get("context") or {}), CONTEXT_KEY: _Pending(token, user, catch)})
        try:
            response = orig(*call.head, **call.kwargs)
        except Exception as exc:
            RECORDER.fail(token, exc)
            raise
        # GreenletExit (the user killed at stop) is a BaseException: the request
        # stays in flight and is written as unanswered by the stop hooks.
        if catch:  # the event fires when the user's block ends; note the answer now
            status = int(getattr(response, "status_code", 0) or 0)
            RECORDER.answer(token, status=status, headers=_headers(response, status),
                            exc=getattr(response, "error", None))
        return response

    request.__dict__.update(__wrapped__=orig, _sandbox_recording=True)  # for inspect.unwrap and install()
    return request


def _headers(response: Any, status: int) -> Any:
    return getattr(response, "headers", None) if status else None


def install() -> None:
    """Wrap the HTTP clients' ``request`` (once per process; idempotent)."""
    for cls, timeout_kw in ((HttpSession, True), (FastHttpSession, False)):
        if not getattr(cls.request, "_sandbox_recording", False):
            # the wrap is the point (setattr with a constant name instead is ruff's B010)
            cls.request = _wrap(cls.request, timeout_kw=timeout_kw)  # type: ignore[method-assign]  # patching Locust


install()


# --------------------------------------------------------------------------- the request event


def _user_failed(exc: BaseException | None, catch_response: bool) -> bool:
    """The user's own ``response.failure(...)``, not a client/network error."""
    return catch_response and exc is not None and not isinstance(exc, (OSError, HTTPException))


@events.request.add_listener
def _on_request(
    request_type: str = "",
    name: str = "",
    response_time: float | None = None,
    response: Any = None,
    context: dict[str, Any] | None = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_kwargs: Any,
) -> None:
    pending = (context or {}).get(CONTEXT_KEY)
    status = int(getattr(response, "status_code", 0) or 0)
    user = pending.user if isinstance(pending, _Pending) else None
    contract: Contract | None = None
    if isinstance(pending, _Pending):
        contract = event_contract(status, _user_failed(exception, pending.catch_response))
    judge = getattr(user, "sandbox_contract", None)
    if judge is not None and status:
        try:
            judged = judge(name, response)
            contract = "violation" if "violation" in (judged, contract) else judged or contract
        except Exception:
            log.exception("contract check failed for %s %s", request_type, name)
    if not isinstance(pending, _Pending):
        RECORDER.record(untracked_row(
            t_end=time.time(), latency_ms=response_time, start_time=start_time, user=user_id(None),
            method=str(request_type), name=str(name), status=status, headers=_headers(response, status),
            exc=exception, contract=contract,
        ))  # fmt: skip
        return
    RECORDER.finish(pending.token, status=status, headers=_headers(response, status),
                    exc=exception if status == 0 else None, contract=contract)
    version = answer_fields(_headers(response, status)).version
    if version == "v2" and user is not None and hasattr(user, "sandbox_expects"):
        user.sandbox_expects = "v2"


# --------------------------------------------------------------------------- stop hooks


def _watch_parent(expected_ppid: int) -> None:
    """End this process (as on SIGTERM) when its parent has gone."""
    while True:
        gevent.sleep(1.0)
        if os.getppid() != expected_ppid:
            log.warning("the parent process (pid %d) has gone; stopping the load", expected_ppid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _flush_and_exit(_signum: int, _frame: Any) -> None:
    """SIGUSR1: write every request still in flight, then exit at once."""
    _state.stopping = _state.quitting = True
    RECORDER.flush_unanswered()
    RECORDER.writer.close()
    RECORDER.write_count()
    os._exit(FLUSH_EXIT_CODE)


def _apply_client_timeout(environment: Environment) -> None:
    """FastHttpUser classes that keep Locust's 60 s timeouts get the sandbox's client timeout."""
    for cls in environment.user_classes:
        if not issubclass(cls, FastHttpUser):
            continue
        for attr in ("network_timeout", "connection_timeout"):
            owner = next(c for c in cls.__mro__ if attr in c.__dict__)
            if owner is FastHttpUser:
                setattr(cls, attr, TIMEOUT_S)


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    _state.environment = environment
    if RECORDER.writer.path is None:
        log.warning("%s is not set: no request rows will be written", ENV_ROWS)
    _apply_client_timeout(environment)
    signal.signal(signal.SIGUSR1, _flush_and_exit)
    ppid = os.getppid()
    if ppid > 1:
        gevent.spawn(_watch_parent, ppid)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    _state.stopping = False
    ready = os.environ.get(ENV_READY, "").strip()
    if ready:
        try:
            Path(ready).touch()
        except OSError:
            log.exception("could not touch %s", ready)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_kwargs: Any) -> None:
    # Fired before Locust stops the users. Locust kills a user it sees "waiting"
    # (between tasks) at once; a user whose think time has just ended is still
    # marked waiting and would be killed right after sending its next request,
    # which would then look unanswered. With the flag set, it sends nothing.
    _state.stopping = True


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    # Runs after every user greenlet has been killed: what is left is unanswered.
    RECORDER.flush_unanswered()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    # On SIGTERM Locust fires `quitting` *before* stopping the users; stop them
    # first so a request that is answered meanwhile is not called unanswered.
    _state.stopping = _state.quitting = True
    runner = environment.runner
    if runner is not None and runner.state != STATE_STOPPED:
        try:
            runner.stop()  # kills the users, then fires test_stop
        except Exception:
            log.exception("stopping the users failed")
    RECORDER.flush_unanswered()
    RECORDER.writer.close()
    RECORDER.write_count()


class RecordedHttpUser(HttpUser):
    """Kept for locustfiles written before any user class recorded: a plain ``HttpUser``.

    Its :meth:`sandbox_contract` hook still lets a subclass judge answers.
    """

    abstract = True
    wait_time = between(*THINK_S)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.sandbox_expects = "v1"
        user_id(self)  # sets self.sandbox_id, which old locustfiles read

    def sandbox_contract(self, name: str, response: Any) -> Contract | None:
        """The row's ``contract`` for an answer; None means "not checked"."""
        return None
