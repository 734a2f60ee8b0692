"""Loaded by Locust ahead of every locustfile (``-f recorder_locustfile.py,<yours>``).

Importing :mod:`sandbox.load.recording` installs the recorder (client wrapper,
request event, stop hooks) once per process, whatever the user's locustfile
imports. This file defines no users.
"""

import sandbox.load.recording  # noqa: F401
