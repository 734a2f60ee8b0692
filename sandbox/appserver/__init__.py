"""The toy app harness that runs inside the app containers.

It runs on Debian bookworm's python3 (3.11) with python3-aiohttp 3.8.4, so it
uses only the standard library and aiohttp APIs that exist from 3.8 on.

- ``appserver.supervisor``: PID 1 of an app container; starts, reloads and stops
  the server child process.
- ``appserver.server``: the aiohttp service shared by both app versions; the
  version-specific bits come from the version module ``/srv/app/app.py``.
"""
