"""The default users for your own app: GETs of the ``--path`` values, picked at random.

Paths come as a JSON list in ``ROLLING_SANDBOX_PATHS``; think time as for the toy app's users.
An answer below 400 is a success: nothing is asked of the app's body or headers.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, between, task

from sandbox.load.rows import ENV_WAIT_MAX, ENV_WAIT_MIN

ENV_PATHS = "ROLLING_SANDBOX_PATHS"
PATHS: list[str] = json.loads(os.environ.get(ENV_PATHS) or '["/"]') or ["/"]


class PathUser(FastHttpUser):
    wait_time = between(float(os.environ.get(ENV_WAIT_MIN, "0.05")), float(os.environ.get(ENV_WAIT_MAX, "0.2")))

    @task
    def get_path(self) -> None:
        path = random.choice(PATHS)
        self.client.get(path, name=path)
