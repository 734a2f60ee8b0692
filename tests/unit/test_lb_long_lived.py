"""The NGINX config proxies long-lived connections (WebSocket, server-sent events) in both apply modes."""

from __future__ import annotations

import re

import pytest

from sandbox.fleet.balancer import render
from sandbox.fleet.loadbalancer import LbState, Upstream

SERVERS = [Upstream(name=f"p-app-{i}", address=f"10.9.0.{i}:8000", version="v1") for i in (1, 2)]


def config(mode: str, **kw: object) -> str:
    state = LbState(lb_apply=mode, upstreams=list(SERVERS), **kw)  # type: ignore[arg-type]
    return render("p", state, admin_token="t")


def location(text: str, head: str) -> str:
    """The body of the location block that starts with ``head`` (no nested braces but the ``if``)."""
    start = text.index(head)
    body, depth = [], 0
    for ch in text[start:]:
        body.append(ch)
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
    return "".join(body)


@pytest.mark.parametrize("mode", ["reload", "dynamic"])
def test_websocket_upgrade_is_passed_on_with_a_connection_map(mode: str) -> None:
    text = config(mode)
    assert re.search(r'map \$http_upgrade \$sandbox_connection \{\s+default upgrade;\s+""\s+"";', text)
    for head in ("location / {", "location @stream {"):
        block = location(text, head)
        assert "proxy_http_version 1.1;" in block
        assert "proxy_set_header Upgrade $http_upgrade;" in block
        assert "proxy_set_header Connection $sandbox_connection;" in block
        assert 'proxy_set_header Connection "";' not in block  # it would strip the upgrade


@pytest.mark.parametrize("mode", ["reload", "dynamic"])
def test_event_streams_go_unbuffered_to_the_stream_location(mode: str) -> None:
    text = config(mode)
    assert re.search(r"map \$http_accept \$sandbox_stream \{\s+default\s+0;\s+~\*text/event-stream 1;", text)
    root = location(text, "location / {")
    assert "error_page 418 = @stream;" in root and "if ($sandbox_stream)" in root
    assert "proxy_buffering off;" not in root  # ordinary answers stay buffered
    stream = location(text, "location @stream {")
    assert "proxy_buffering off;" in stream and "proxy_pass http://app;" in stream
    if mode == "dynamic":  # the Lua balancer picks and counts the server there too
        assert "log_by_lua_block { sandbox_lb.done() }" in stream
        assert "access_by_lua_block { sandbox_lb.access() }" in stream


@pytest.mark.parametrize("mode", ["reload", "dynamic"])
@pytest.mark.parametrize("timeout", [30, 95])
def test_stream_timeouts_follow_the_read_timeout_setting(mode: str, timeout: int) -> None:
    text = config(mode, read_timeout_s=timeout)
    for head in ("location / {", "location @stream {"):
        block = location(text, head)
        assert f"proxy_read_timeout {timeout}s;" in block
        assert f"proxy_send_timeout {timeout}s;" in block


def test_dynamic_counts_long_lived_connections_apart_from_requests_in_flight() -> None:
    text = config("dynamic")
    assert "lua_shared_dict sandbox_longlived 1m;" in text
    assert "ctx.sandbox_count = is_long_lived() and longlived or inflight" in text
    assert 'location = /longlived { content_by_lua_block { sandbox_lb.admin("longlived") } }' in text


def test_no_server_attached_has_no_stream_location() -> None:
    text = render("p", LbState(upstreams=[]))
    assert "location @stream" not in text and "no server attached" in text
