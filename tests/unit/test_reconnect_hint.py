"""The toy app's reconnect hint (``APP_RECONNECT_MS``): given in the SSE ``retry:`` and in the
WebSocket close reason (``retry=N``), and read back by the long-lived users."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from sandbox.appserver.server import RECONNECT_MS, Settings, Shop
from sandbox.load.longlived import SseParser, backoff_ms, reason_retry_ms, ws_close
from tests.unit.test_appserver import load_version


@pytest_asyncio.fixture
async def hinted() -> AsyncIterator[tuple[TestClient, Shop]]:
    """A v1 shop started with ``APP_RECONNECT_MS=500``."""
    shop = Shop(Settings.from_env({"APP_RECONNECT_MS": "500"}), load_version("v1"), instance="test-host/abc123")
    client = TestClient(TestServer(shop.make_app()))
    await client.start_server()
    yield client, shop
    await client.close()


def test_setting_default_bounds_and_bad_values() -> None:
    assert Settings.from_env({}).reconnect_ms == RECONNECT_MS == 1000
    assert Settings.from_env({"APP_RECONNECT_MS": "250"}).reconnect_ms == 250
    assert Settings.from_env({"APP_RECONNECT_MS": "0"}).reconnect_ms == 0
    for bad in ("-1", "soon", "3600001"):
        with pytest.raises(ValueError, match="APP_RECONNECT_MS"):
            Settings.from_env({"APP_RECONNECT_MS": bad})


@pytest.mark.parametrize(("reason", "hint"), [
    ("retry=500", 500.0), ("server stopping retry=1500", 1500.0), ("retry=20, going away", 20.0),
    ("", None), ("server stopping", None), ("retry=", None), ("retry=-5", None), ("noretry=5", None),
    ("retry=5x", None),
])  # fmt: skip
def test_hint_in_a_websocket_close_reason(reason: str, hint: float | None) -> None:
    assert reason_retry_ms(reason) == hint


def test_the_hint_bounds_the_wait() -> None:
    almost = 0.999999
    assert backoff_ms(0, reason_retry_ms("retry=500"), lambda: almost) == pytest.approx(500, rel=1e-5)
    assert backoff_ms(0, reason_retry_ms("going away"), lambda: almost) == pytest.approx(1000, rel=1e-5)


@pytest.mark.asyncio
async def test_sse_goodbye_carries_the_setting(hinted: tuple[TestClient, Shop]) -> None:
    client, shop = hinted
    resp = await client.get("/events")
    await resp.content.readuntil(b"\n\n")  # the first tick
    shop.begin_stop()
    parser, hints = SseParser(), []
    for line in (await resp.content.read()).decode().split("\n"):
        event = parser.feed(line)
        if event is not None and event.retry_ms is not None:
            hints.append((event.event, event.retry_ms))
    assert hints == [("bye", 500.0)]
    assert await shop.wait_idle(2)


@pytest.mark.asyncio
async def test_websocket_close_reason_carries_the_setting(hinted: tuple[TestClient, Shop]) -> None:
    client, shop = hinted
    ws = await client.ws_connect("/ws")
    await ws.receive_str()  # the first tick
    shop.begin_stop()
    while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
        pass
    assert msg.type == aiohttp.WSMsgType.CLOSE
    payload = int(msg.data).to_bytes(2, "big") + str(msg.extra).encode()
    assert ws_close(payload) == (1001, "retry=500")
    assert reason_retry_ms(ws_close(payload)[1]) == 500.0
    await ws.close()
    assert await shop.wait_idle(2)
