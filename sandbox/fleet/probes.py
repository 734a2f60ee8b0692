"""HTTP probes of one app server: readiness (``/healthz``) and its counters (``/metrics``).

The controller reaches app containers on their address in the project's own
bridge network; they publish no port.
"""

from __future__ import annotations

import re

import aiohttp

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text to ``{name: value}``; labelled samples of one name are summed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match:
            try:
                value = float(match.group(3))
            except ValueError:
                continue
            out[match.group(1)] = out.get(match.group(1), 0.0) + value
    return out


class Probe:
    """Short-timeout HTTP probes, sharing one client session."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Probe:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Probe used outside 'async with'")
        return self._session

    async def ready(self, address: str, version: str | None = None) -> bool:
        """True when ``GET /healthz`` answers 200 (and reports ``version``, when given)."""
        try:
            async with self.session.get(f"http://{address}/healthz") as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    return False
                return version is None or (isinstance(body, dict) and body.get("version") == version)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return False

    async def metrics(self, address: str) -> dict[str, float] | None:
        """The server's counters, or None when it does not answer."""
        try:
            async with self.session.get(f"http://{address}/metrics") as resp:
                if resp.status != 200:
                    return None
                return parse_metrics(await resp.text())
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
