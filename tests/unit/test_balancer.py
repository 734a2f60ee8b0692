"""Rendering the NGINX config from the attached set (pure; no NGINX needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import BalancerError
from sandbox.fleet.balancer import LbState, Upstream, _last_line, compose_config, parse_state, render

REPO = Path(__file__).resolve().parents[2]


def servers(n: int) -> list[Upstream]:
    return [Upstream(name=f"p-app-{i}", address=f"10.9.0.{i}:8000", version="v1") for i in range(1, n + 1)]


def upstream_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("server 10.")]


def test_one_server() -> None:
    text = render("p", LbState(generation=3, upstreams=servers(1)))
    assert upstream_lines(text) == ["server 10.9.0.1:8000;  # p-app-1 (v1)"]
    assert "proxy_pass http://app;" in text
    assert 'return 200 "3";' in text  # the generation the controller waits for


@pytest.mark.parametrize("n", [2, 9, 12])
def test_n_servers(n: int) -> None:
    text = render("p", LbState(upstreams=servers(n)))
    assert len(upstream_lines(text)) == n
    assert "keepalive 32;" in text and "proxy_connect_timeout 1s;" in text


def test_no_server_attached_answers_503_without_an_upstream_block() -> None:
    text = render("p", LbState(upstreams=[]))
    assert "upstream app" not in text and "proxy_pass" not in text
    assert "return 503" in text


def test_sticky_and_keepalive_knobs() -> None:
    plain = render("p", LbState(upstreams=servers(2)))
    sticky = render("p", LbState(upstreams=servers(2), sticky=True, client_keepalive_s=65))
    assert "hash $sticky_key consistent;" in sticky and "hash " not in plain
    assert "keepalive_timeout 0;" in plain and "keepalive_timeout 65;" in sticky


def test_retry_on_another_server_is_off_unless_asked() -> None:
    assert "proxy_next_upstream off;" in render("p", LbState(upstreams=servers(2)))
    assert "proxy_next_upstream error timeout;" in render("p", LbState(upstreams=servers(2), retry=True))


def test_json_access_log_fields() -> None:
    text = render("p", LbState(upstreams=servers(1)))
    for field in ("time", "rid", "status", "upstream_addr", "upstream_status", "request_time",
                  "upstream_response_time"):
        assert f'"{field}":' in text
    assert "proxy_set_header X-Request-ID $req_id;" in text


def test_state_round_trips_through_the_rendered_text() -> None:
    state = LbState(generation=7, size=4, upstreams=servers(3), rollout={"kind": "roll", "from": "v1", "to": "v2"},
                    sticky=True)
    assert parse_state(render("p", state)) == state


def test_a_foreign_config_has_an_empty_state_and_a_broken_one_is_an_error() -> None:
    assert parse_state("events {}\n") == LbState()
    with pytest.raises(BalancerError):
        parse_state("# rolling-sandbox-state: {not json\n")


def test_nginx_error_line_is_picked() -> None:
    out = ('nginx: [emerg] unknown directive "bogus" in /x.conf:3\n'
           "nginx: configuration file /x.conf test failed\n")
    assert _last_line(out) == 'unknown directive "bogus" in /x.conf:3'


def test_compose_config_is_current() -> None:
    assert (REPO / "compose" / "nginx.conf").read_text() == compose_config(), \
        "compose/nginx.conf is stale: regenerate it (see sandbox.fleet.balancer.compose_config)"
