"""The default locustfile: simulated shop users.

Run only by the ``locust`` CLI in its own process (``sandbox/load/run.py`` starts
it). It imports locust, which monkey-patches the standard library with gevent:
never import this module from the controller or from pytest.

Recording happens in ``sandbox/load/recording.py`` for every user class
(``HttpUser``, ``FastHttpUser``, clients of your own): this file only defines
the users. ``ShopUser`` is a ``FastHttpUser`` (the fast client, so one Locust
process drives more requests per second); its think time is ``--think-ms``.

For compatibility, ``from sandbox.load.locustfile import RecordedHttpUser`` (and
``*``) still works: ``RecordedHttpUser`` is a plain ``HttpUser`` with a
``sandbox_contract`` hook. ``ShopUser`` is not exported (``__all__``), so
``from sandbox.load.locustfile import *`` adds no users of ours to a custom run.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from locust import between, task
from locust.clients import HttpSession
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopUser

from sandbox.load.recording import RECORDER, THINK_S, TIMEOUT_S, RecordedHttpUser
from sandbox.load.rows import Contract, ToyVersion, check_contract, is_success, parse_json, v2_mode_from_env

__all__ = ["RECORDER", "RecordedHttpUser", "RecordingSession"]

log = logging.getLogger("sandbox.load.run")

#: Kept for old locustfiles: every HttpSession records now.
RecordingSession = HttpSession

V2_MODE = v2_mode_from_env()
ITEM_NAME = "/api/items/[id]"


class ShopUser(FastHttpUser):
    """A shopper: looks at items, fills a cart, looks at the cart and the home page.

    Keeps the app's ``sid`` cookie (the session's cookie jar); checks item
    answers against the contract the user expects ("v2" once it has received
    any v2 answer).
    """

    wait_time = between(*THINK_S)
    network_timeout = TIMEOUT_S
    connection_timeout = TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sandbox_expects: ToyVersion = "v1"

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
        # The recorder writes the row when the block ends; nothing here may fail the task.
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
