"""The default locustfile: simulated shop users, and the recorder every run uses.

Run only by the ``locust`` CLI in its own process (``sandbox/load/run.py`` starts
it). It imports locust, which monkey-patches the standard library with gevent:
never import this module from the controller or from pytest.

Recording
---------
Every request a :class:`RecordedHttpUser` sends goes through
:class:`RecordingSession`, which

* sends a fresh ``X-Request-ID`` (uuid4 hex) unless the caller set one, and a
  client timeout (``ROLLING_SANDBOX_TIMEOUT``, default 10 s) unless the caller
  set one;
* registers the request as in flight when it is sent and writes exactly one
  :class:`~sandbox.results.records.RequestRow` (a JSON line, flushed at once) to the
  file named by ``ROLLING_SANDBOX_ROWS`` when it ends -- answered, failed
  (status 0, e.g. "ConnectionResetError", "ReadTimeout") or, when the load
  stops while it waits, as ``unanswered`` (status 0, "unanswered at stop").

Locust's own statistics and failure counts play no part: the rows are the truth.
Locust never retries (requests' adapter makes no retries; nothing here does).

A custom locustfile (``--locustfile``)
--------------------------------------
Subclass :class:`RecordedHttpUser` instead of ``HttpUser``; use ``self.client``
as usual::

    from locust import task
    from sandbox.load.locustfile import RecordedHttpUser

    class MyUser(RecordedHttpUser):
        @task
        def home(self) -> None:
            self.client.get("/")

Importing this module also installs the stop hooks that write the unanswered
rows (and the guard that ends Locust if the controller dies). ``ShopUser`` is not
exported (``__all__``), so ``from sandbox.load.locustfile import *`` adds no users of
ours to a custom run. A locustfile whose users are not ``RecordedHttpUser``
(e.g. ``FastHttpUser``) writes no rows, and the run has nothing to measure.
Override :meth:`RecordedHttpUser.sandbox_contract` to check answers against a
contract of your own.

Environment (set by ``sandbox/load/run.py``): ``ROLLING_SANDBOX_ROWS``,
``ROLLING_SANDBOX_READY`` (a file touched when the test starts),
``ROLLING_SANDBOX_V2_MODE``, ``ROLLING_SANDBOX_TIMEOUT``,
``ROLLING_SANDBOX_WAIT_MIN/MAX``, ``ROLLING_SANDBOX_PARENT_PID``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import HttpUser, between, events, task
from locust.clients import HttpSession
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import STATE_STOPPED

from sandbox.load.rows import (
    ENV_PARENT_PID,
    ENV_READY,
    ENV_ROWS,
    ENV_TIMEOUT,
    ENV_WAIT_MAX,
    ENV_WAIT_MIN,
    Contract,
    Recorder,
    RowWriter,
    Version,
    check_contract,
    env_float,
    is_success,
    parse_json,
    v2_mode_from_env,
)

__all__ = ["RECORDER", "RecordedHttpUser", "RecordingSession"]

log = logging.getLogger("sandbox.load.run")

#: The process-wide in-flight registry and row file.
RECORDER = Recorder(RowWriter(os.environ.get(ENV_ROWS) or None))

TIMEOUT_S = env_float(ENV_TIMEOUT, 10.0) or 10.0
V2_MODE = v2_mode_from_env()
_WAIT_MIN = env_float(ENV_WAIT_MIN, 0.05)
_WAIT_MAX = max(_WAIT_MIN, env_float(ENV_WAIT_MAX, 0.2))

_user_ids = itertools.count(1)

# Set when Locust starts stopping the test: from then on no request is sent
# (the user stops instead), so Locust never kills a user in the middle of a
# request it has only just sent. See _on_test_stopping.
_stopping = False

ITEM_NAME = "/api/items/[id]"


class RecordingSession(HttpSession):
    """Locust's HTTP session, writing one row per request (see the module docstring)."""

    def __init__(self, *args: Any, owner: RecordedHttpUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def request(  # type: ignore[override]
        self,
        method: str | bytes,
        url: str | bytes,
        name: str | None = None,
        catch_response: bool = False,
        context: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        method_s = method.decode() if isinstance(method, bytes) else str(method)
        url_s = url.decode() if isinstance(url, bytes) else str(url)
        label = name or self.request_name or urlsplit(url_s).path or "/"

        headers = dict(kwargs.pop("headers", None) or {})
        rid = next((str(v) for k, v in headers.items() if k.lower() == "x-request-id"), None)
        if rid is None:
            rid = uuid.uuid4().hex
            headers["X-Request-ID"] = rid
        kwargs.setdefault("timeout", TIMEOUT_S)

        if _stopping:
            raise StopUser()
        owner = self.owner
        token = RECORDER.begin(user=owner.sandbox_id, rid=rid, method=method_s, name=label)
        try:
            response = super().request(
                method,
                url,
                name=name,
                catch_response=catch_response,
                context=context if context is not None else {},
                headers=headers,
                **kwargs,
            )
        except Exception as exc:  # e.g. ChunkedEncodingError while reading the body
            RECORDER.fail(token, exc)
            raise
        # GreenletExit (the user killed at stop) is a BaseException: the request
        # stays in flight and is written as unanswered by the stop hooks.

        status = int(response.status_code or 0)
        version = response.headers.get("X-App-Version") if status else None
        contract: Contract | None = None
        try:
            contract = owner.sandbox_contract(label, response)
        except Exception:
            log.exception("contract check failed for %s %s", method_s, label)
        RECORDER.finish(
            token,
            status=status,
            headers=response.headers if status else None,
            exc=getattr(response, "error", None),
            contract=contract,
        )
        if version and version.strip() == "v2":
            owner.sandbox_expects = "v2"
        return response


class RecordedHttpUser(HttpUser):
    """An ``HttpUser`` whose every request is recorded as a RequestRow."""

    abstract = True
    wait_time = between(_WAIT_MIN, _WAIT_MAX)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.sandbox_id = f"u{next(_user_ids)}"
        # "v2" once this user has received any v2 answer.
        self.sandbox_expects: Version = "v1"
        old = self.client
        self.client = RecordingSession(
            base_url=self.host,
            request_event=self.environment.events.request,
            user=self,
            pool_manager=self.pool_manager,
            owner=self,
        )
        self.client.trust_env = False
        old.close()

    def sandbox_contract(self, name: str, response: Any) -> Contract | None:
        """The row's ``contract`` for an answer; None means "not checked"."""
        return None


class ShopUser(RecordedHttpUser):
    """A shopper: looks at items, fills a cart, looks at the cart and the home page.

    Keeps the app's ``sid`` cookie (the session's cookie jar); checks item
    answers against the contract the user expects.
    """

    @task(5)
    def view_item(self) -> None:
        self._call("GET", f"/api/items/{random.randint(1, 100)}", ITEM_NAME)

    @task(2)
    def add_to_cart(self) -> None:
        self._call("POST", "/api/cart", "/api/cart", json={"item": random.randint(1, 100)})

    @task(2)
    def view_cart(self) -> None:
        self._call("GET", "/api/cart", "/api/cart")

    @task(1)
    def home(self) -> None:
        self._call("GET", "/", "/")

    def _call(self, method: str, path: str, name: str, **kwargs: Any) -> None:
        # The recorder has already written the row; nothing here may fail the task.
        try:
            with self.client.request(method, path, name=name, catch_response=True, **kwargs) as r:
                r.success()
        except StopUser:
            raise
        except Exception as exc:
            log.debug("%s %s raised %r", method, name, exc)

    def sandbox_contract(self, name: str, response: Any) -> Contract | None:
        if name != ITEM_NAME or not is_success(int(response.status_code or 0)):
            return None
        return check_contract(parse_json(response.content), self.sandbox_expects, V2_MODE)


# --------------------------------------------------------------------------- stop hooks


def _watch_parent(expected_ppid: int) -> None:
    """End Locust (as on SIGTERM) when the process that started it has gone."""
    while True:
        gevent.sleep(1.0)
        if os.getppid() != expected_ppid:
            log.warning("the controller (pid %d) has gone; stopping the load", expected_ppid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    if RECORDER.writer.path is None:
        log.warning("%s is not set: no request rows will be written", ENV_ROWS)
    raw = os.environ.get(ENV_PARENT_PID, "").strip()
    if raw.isdigit() and int(raw) == os.getppid():
        gevent.spawn(_watch_parent, int(raw))


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    global _stopping
    _stopping = False
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
    global _stopping
    _stopping = True


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    # Runs after every user greenlet has been killed: what is left is unanswered.
    RECORDER.flush_unanswered()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    # On SIGTERM Locust fires `quitting` *before* stopping the users; stop them
    # first so a request that is answered meanwhile is not called unanswered.
    global _stopping
    _stopping = True
    runner = environment.runner
    if runner is not None and runner.state != STATE_STOPPED:
        try:
            runner.stop()  # kills the users, then fires test_stop
        except Exception:
            log.exception("stopping the users failed")
    RECORDER.flush_unanswered()
    RECORDER.writer.close()
