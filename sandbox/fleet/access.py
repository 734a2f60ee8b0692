"""Who may steer the fleet: what the controller needs so that nothing else on the fleet's network can.

- The load balancer's admin listener allows one source address, the controller's
  (:func:`controller_address`), and denies every other; the token is checked too.
- The shared session store requires a password (:func:`new_secret`) that the controller
  records in the fleet's app environment (``SESSION_PASSWORD_ENV``), where every server of
  every later rollout gets it, and a fresh controller process finds it. The project's PostgreSQL
  server (``up --service postgres``) is reached the same way: its ``DATABASE_URL``, with a fresh
  password, is recorded in the app environment.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from sandbox.errors import BalancerError

SESSION_PASSWORD_ENV = "APP_REDIS_PASSWORD"
DATABASE_URL_ENV = "DATABASE_URL"  # `up --service postgres`: the URL, password included, recorded the same way


def controller_address(target_ip: str) -> str:
    """The address this process's packets to ``target_ip`` leave from: what that host sees as
    their source (from the host, its address on the project's bridge or on docker_gwbridge).

    Nothing is sent: a UDP socket is only connected, so the kernel picks the route and the
    source address. Raises BalancerError when ``target_ip`` is no address or has no route.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(target_ip).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((target_ip, 9))
            return str(sock.getsockname()[0])
    except (ValueError, OSError) as exc:
        raise BalancerError(f"no route from here to the load balancer's admin address {target_ip!r}: {exc}") from exc


def services(app_env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The services the fleet's record gives its servers, by name, with where they listen and never
    their password: ``{"postgres": {"address": "p-postgres:5432", "database": "postgres"}}``."""
    out: dict[str, dict[str, str]] = {}
    url = urlsplit(app_env.get(DATABASE_URL_ENV, ""))
    if url.scheme.startswith("postgres") and url.hostname:
        out["postgres"] = {"address": f"{url.hostname}:{url.port or 5432}", "database": url.path.lstrip("/")}
    return out


def new_secret() -> str:
    """A fresh random secret (128 bits, hex): the session store's password."""
    return secrets.token_hex(16)
