"""HTTP probes of one app server: readiness (``/healthz``) and its counters (``/metrics``).

The controller reaches app containers on their address in the project's own
bridge network; they publish no port.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._why: dict[str, str] = {}  # address -> what its last failed check saw

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

    async def ready(self, address: str, version: str | None = None, path: str = "/healthz") -> bool:
        """True when ``GET path`` answers 2xx (and, when ``version`` is given, the toy app's JSON
        reports that version). A failed check's reason is kept for :meth:`last_failure`."""
        try:
            async with self.session.get(f"http://{address}{path}") as resp:
                if not 200 <= resp.status < 300:
                    return self._failed(address, f"GET {path} answered {resp.status} {(await resp.text())[:300]!r}")
                if version is None:
                    return self._passed(address)
                body = await resp.json(content_type=None)
                if isinstance(body, dict) and body.get("version") == version:
                    return self._passed(address)
                return self._failed(address, f"GET {path} answered {str(body)[:120]!r}, not version {version}")
        except TimeoutError:
            return self._failed(address, f"GET {path} had no answer within {self._timeout.total:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._failed(address, f"GET {path} failed: {type(exc).__name__}: {exc}")

    def last_failure(self, address: str) -> str | None:
        """What the last failed readiness check of ``address`` saw, or None when its last one passed."""
        return self._why.get(address)

    def _failed(self, address: str, why: str) -> bool:
        self._why[address] = why
        return False

    def _passed(self, address: str) -> bool:
        self._why.pop(address, None)
        return True

    async def accepts(self, address: str) -> bool:
        """True when a TCP connection to ``address`` (``ip:port``) is accepted. Through a relay
        (``host:port/probe/ip:port``) no TCP reaches the server: there, any answer but the relay's
        own 502 or 504 (it could not connect) counts."""
        if "/" in address:
            try:
                async with self.session.get(f"http://{address}/") as resp:
                    if resp.status in (502, 504):
                        return self._failed(address, f"the relay could not connect ({resp.status})")
                    return self._passed(address)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                return self._failed(address, f"the relay did not answer: {type(exc).__name__}: {exc}")
        host, _, port = address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), self._timeout.total)
        except (TimeoutError, OSError, ValueError) as exc:
            return self._failed(address, f"a TCP connection was not accepted: {type(exc).__name__}: {exc}")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return self._passed(address)

    async def metrics(self, address: str) -> dict[str, float] | None:
        """The server's counters, or None when it does not answer."""
        try:
            async with self.session.get(f"http://{address}/metrics") as resp:
                if resp.status != 200:
                    return None
                return parse_metrics(await resp.text())
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None


async def long_lived_problem(url: str, *, ws_path: str | None = None, sse_path: str | None = None,
                             timeout_s: float = 5.0) -> str | None:
    """One WebSocket handshake on ``ws_path`` and one event-stream request on ``sse_path`` (None:
    not tried) through ``url`` (the load balancer): what is wrong, in one line naming the flag, or
    None when the WebSocket upgraded (101) and the stream answered 200 ``text/event-stream``.
    Both are closed at once; nothing else is sent."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if ws_path is not None:
            try:
                ws = await session.ws_connect(f"{url}{ws_path}", autoping=False)
                await ws.close()
            except aiohttp.WSServerHandshakeError as exc:
                return (f"--ws-path {ws_path}: {url}{ws_path} answered {exc.status} to a WebSocket upgrade, "
                        f"not 101 (give the path your app upgrades on)")
            except (TimeoutError, aiohttp.ClientError) as exc:
                return f"--ws-path {ws_path}: no WebSocket at {url}{ws_path}: {type(exc).__name__}"
        if sse_path is not None:
            try:
                async with session.get(f"{url}{sse_path}", headers={"Accept": "text/event-stream"}) as resp:
                    kind = resp.headers.get("Content-Type", "")
                    if resp.status != 200 or not kind.startswith("text/event-stream"):
                        return (f"--sse-path {sse_path}: {url}{sse_path} answered {resp.status} "
                                f"{kind or 'with no Content-Type'}, not 200 text/event-stream")
            except (TimeoutError, aiohttp.ClientError) as exc:
                return f"--sse-path {sse_path}: no event stream at {url}{sse_path}: {type(exc).__name__}"
    return None
