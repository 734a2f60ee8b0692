"""Rollback safety, rehearsed: would the old version still work against the schema as it is now?

After a roll that changed the database (``--migrate``, ``--contract``), ``rollback`` is the way
back the seed calls simple; it is simple only while the old version still works against the
current schema. Rather than guess from the SQL, the rehearsal serves it: one container of the
*old* version's image, with the fleet's own environment (its ``DATABASE_URL``), on the project's
network, started through the engine's one-off runner (labelled, removed afterwards). It is not
attached to the load balancer, so no user is hurt; the users' load goes on against the fleet
meanwhile. Inside it, the server runs in the background and :data:`CLIENT` (standard library only)
sends it the toy's request mix for ``seconds`` from a few users with their own cookies: item views,
cart adds (each an order written to the database), cart views (the orders read back) and the home
page, 5:2:2:1 as the load generator's shoppers. Every 4xx/5xx answer or failed request is an error;
the first one is kept, with its body's start (the toy says ``schema mismatch`` and which column).

It runs after the rollout (once ``--migrate`` ran, before or after) and again after the contract
step. Only for the toy app: your own app's request mix is yours (the record says so, not run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping

from sandbox.results.model import RollbackRehearsal
from sandbox.rollout.mixed import last_line

USERS = 4  # concurrent users in the rehearsal
BOOT_S = 30.0  # how long the old server may take to answer /healthz
CLIENT_ENV = "SANDBOX_ROLLBACK_CLIENT"

# runs in the old version's container: waits for /healthz, sends the mix, prints one JSON line
CLIENT = r'''
import http.cookiejar, json, os, random, sys, threading, time, urllib.error, urllib.request
base = "http://127.0.0.1:" + os.environ.get("APP_PORT", "8000")
seconds, users, boot = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.time() + boot
while True:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if time.time() > end:
        print(json.dumps({"error": "the old version's server did not answer /healthz in %g s" % boot}))
        sys.exit(3)
    time.sleep(0.2)
lock = threading.Lock()
seen = {"requests": 0, "errors": 0, "first_error": None}
def one(opener, method, path, body):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with opener.open(req, timeout=10) as r:
            r.read()
            return None
    except urllib.error.HTTPError as e:
        text = " ".join(e.read(300).decode("utf-8", "replace").split())
        return "%s %s: %d %s" % (method, path, e.code, text)
    except Exception as e:
        return "%s %s: %s" % (method, path, e)
def user():
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    stop = time.time() + seconds
    while time.time() < stop:
        pick = random.choices(("item", "add", "cart", "home"), (5, 2, 2, 1))[0]
        n = random.randint(1, 100)
        call = {"item": ("GET", "/api/items/%d" % n, None), "add": ("POST", "/api/cart", {"item": n}),
                "cart": ("GET", "/api/cart", None), "home": ("GET", "/", None)}[pick]
        error = one(opener, *call)
        with lock:
            seen["requests"] += 1
            if error:
                seen["errors"] += 1
                seen["first_error"] = seen["first_error"] or error
        time.sleep(random.uniform(0.02, 0.1))
threads = [threading.Thread(target=user) for _ in range(users)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(seen))
'''

RunOnce = Callable[[str, str, Mapping[str, str], float], Awaitable[tuple[int, str]]]
"""(image, command, env, timeout) -> (exit code, output): the engine's one-off runner."""


def command(seconds: float, users: int = USERS) -> str:
    """The container's shell command: the toy's server in the background, then the client."""
    return (f"python3 -m appserver.supervisor >/tmp/server.log 2>&1 & "
            f'exec python3 -c "${CLIENT_ENV}" {seconds:g} {users} {BOOT_S:g}')


def parse(after: str, version: str, exit_code: int, output: str, duration_s: float) -> RollbackRehearsal:
    """The record of one rehearsal from what its container printed (its last JSON line)."""
    found: Mapping[str, object] | None = None
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                loaded = json.loads(line)
            except ValueError:
                continue
            if isinstance(loaded, dict):
                found = loaded
                break
    took = round(duration_s, 3)
    if found is None or "error" in found or exit_code != 0:
        why = (str(found["error"]) if found and "error" in found
               else f"exit {exit_code}: {last_line(output) or 'no output'}")
        return RollbackRehearsal(after, version, "failed", duration_s=took, reason=why)
    first = found.get("first_error")
    return RollbackRehearsal(after, version, "ran", requests=int(str(found.get("requests") or 0)),
                             errors=int(str(found.get("errors") or 0)),
                             first_error=str(first) if first else None, duration_s=took)


async def rehearse(after: str, version: str, image: str, env: Mapping[str, str], run_once: RunOnce, *,
                   seconds: float) -> RollbackRehearsal:
    """Serve ``version``'s ``image`` with ``env`` for ``seconds`` under the toy's mix; its record."""
    t0 = time.monotonic()
    code, output = await run_once(image, command(seconds), {**env, CLIENT_ENV: CLIENT}, seconds + BOOT_S + 30)
    return parse(after, version, code, output, time.monotonic() - t0)


def not_run(after: str, version: str, reason: str) -> RollbackRehearsal:
    """The record of a rehearsal that did not run, and why."""
    return RollbackRehearsal(after, version, "not_run", reason=reason)
