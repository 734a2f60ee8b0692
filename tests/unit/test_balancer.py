"""Rendering the NGINX config from the attached set (pure; no NGINX needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import BalancerError
from sandbox.fleet import nginx_log
from sandbox.fleet.balancer import (
    ACCESS_LOG,
    NginxBalancer,
    _last_line,
    admin_body,
    compose_config,
    config_id,
    lb_read_timeout_s,
    parse_admin_body,
    parse_in_flight,
    parse_state,
    render,
)
from sandbox.fleet.loadbalancer import LbState, Upstream
from tests.unit.fakes import FakeRuntime

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
    for field in nginx_log.NginxRow.__annotations__:  # the format nginx_log reads is the one NGINX writes
        assert f'"{field}":' in text
    assert "proxy_set_header X-Request-ID $req_id;" in text


def test_upstream_addresses() -> None:
    assert nginx_log.upstream_addresses("10.0.0.1:8000, 10.0.0.2:8000") == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert nginx_log.upstream_addresses("a:1 : b:2") == ["a:1", "b:2"]
    assert nginx_log.upstream_addresses("-") == nginx_log.upstream_addresses("") == []
    assert nginx_log.upstream_addresses(None) == []


LOG = (
    '{"time":1700000000.123,"rid":"r1","method":"GET","uri":"/","status":200,"upstream_addr":"10.9.0.1:8000",'
    '"upstream_status":"200","request_time":0.004,"upstream_response_time":"0.004"}\n'
    "not json\n"
    '{"time":1700000000.5,"rid":"r2","method":"GET","uri":"/","status":502,'
    '"upstream_addr":"10.9.0.1:8000, 10.9.0.2:8000","upstream_status":"502, 502","request_time":1.0,'
    '"upstream_response_time":"0.5, 0.5"}\n'
    '{"time":1700000001.0,"rid":"","method":"GET","uri":"/x","status":499,"upstream_addr":"-",'
    '"upstream_status":"-","request_time":0.1,"upstream_response_time":"-"}\n'
)


def test_the_access_log_is_read_into_neutral_rows() -> None:
    assert nginx_log.parse(LOG) == [
        {"time": 1700000000.123, "rid": "r1", "status": 200, "servers": ["10.9.0.1:8000"]},
        {"time": 1700000000.5, "rid": "r2", "status": 502, "servers": ["10.9.0.1:8000", "10.9.0.2:8000"]},
        {"time": 1700000001.0, "rid": "", "status": 499, "servers": []},
    ]


@pytest.mark.asyncio
async def test_the_balancer_reads_its_log_through_the_engine() -> None:
    runtime = FakeRuntime()
    runtime.up(1)
    runtime.files[("p-lb", ACCESS_LOG)] = LOG.encode()
    rows = await NginxBalancer(runtime, "p", 18080).access_log()
    assert [r["rid"] for r in rows] == ["r1", "r2", ""] and rows[1]["servers"][-1] == "10.9.0.2:8000"


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


# -- --lb-apply dynamic --------------------------------------------------------------------------
def dynamic(**kw: object) -> LbState:
    return LbState(lb_apply="dynamic", **kw)  # type: ignore[arg-type]


def test_dynamic_config_has_the_lua_balancer_and_no_server_addresses() -> None:
    text = render("p", dynamic(generation=4, size=3, upstreams=servers(3), client_keepalive_s=65), admin_token="t0k")
    assert "include /etc/nginx/modules-enabled/*.conf;" in text  # Debian's load_module snippets
    assert "balancer_by_lua_block { sandbox_lb.balance() }" in text
    assert text.index("balancer_by_lua_block") < text.index("keepalive 32;")  # keepalive wraps the balancer
    assert "listen 8081;" in text and 'local TOKEN = "t0k"' in text
    assert "access_by_lua_block" in text and "log_by_lua_block { sandbox_lb.done() }" in text
    assert "body_filter_by_lua_block { sandbox_lb.body_filter() }" in text
    assert "10.9.0." not in text and upstream_lines(text) == []
    assert "proxy_next_upstream off;" in text and "keepalive_timeout 65;" in text
    assert "local STICKY = false" in text and "local RETRY = false" in text


def test_dynamic_config_does_not_change_with_the_set_or_the_rollout() -> None:
    """The set, the rollout record, the generation never change the text: no reload in a rollout."""
    a = render("p", dynamic(generation=1, upstreams=servers(2)), admin_token="t")
    b = render("p", dynamic(generation=9, size=5, upstreams=servers(5), rollout={"kind": "roll"},
                            app_env={"A": "1"}), admin_token="t")
    assert a == b
    assert render("p", dynamic(sticky=True), admin_token="t") != a
    assert render("p", dynamic(retry=True), admin_token="t") != a
    assert render("p", dynamic(), admin_token="other") != a
    assert "local STICKY = true" in render("p", dynamic(sticky=True), admin_token="t")


def test_dynamic_config_carries_its_settings_and_an_id() -> None:
    text = render("p", dynamic(sticky=True, retry=True, client_keepalive_s=65, upstreams=servers(2)), admin_token="t")
    state = parse_state(text)
    assert state == LbState(lb_apply="dynamic", sticky=True, retry=True, client_keepalive_s=65)
    cid = config_id(text)
    assert cid and len(cid) == 16 and f'ngx.print("{cid}")' in text
    assert config_id(render("p", LbState(upstreams=servers(1)))) is None
    assert config_id(render("p", dynamic(), admin_token="t")) != cid


def test_dynamic_needs_a_token() -> None:
    with pytest.raises(BalancerError, match="admin token"):
        render("p", dynamic())


def admin_server_block(text: str) -> str:
    start = text.index("listen 8081;")
    return text[start:text.index("}", text.index("location = /config", start))]


def test_the_admin_listener_allows_the_controller_only() -> None:
    block = admin_server_block(render("p", dynamic(), admin_token="t", admin_from="172.18.0.1"))
    assert [ln.strip() for ln in block.splitlines() if ln.strip().startswith(("allow", "deny"))] == [
        "allow 172.18.0.1;", "deny all;"]
    assert block.index("allow 172.18.0.1;") < block.index("deny all;") < block.index("location")
    # without the controller's address nobody is allowed (fail closed), never everybody
    block = admin_server_block(render("p", dynamic(), admin_token="t"))
    assert "allow" not in block and "deny all;" in block
    assert render("p", dynamic(), admin_token="t", admin_from="172.18.0.1") != render(
        "p", dynamic(), admin_token="t", admin_from="172.18.0.9")


def test_the_admin_allowed_address_must_be_an_address() -> None:
    with pytest.raises(BalancerError, match="no IP address"):
        render("p", dynamic(), admin_token="t", admin_from="all; allow 0.0.0.0/0")


def test_the_admin_token_is_compared_in_constant_time() -> None:
    text = render("p", dynamic(), admin_token="t0k", admin_from="10.0.0.1")
    assert "~= TOKEN" not in text and "== TOKEN" not in text  # no early-exit string compare
    assert "if not token_ok(ngx.var.http_x_sandbox_token) then return reject(403" in text
    assert "for i = 1, #TOKEN do" in text and "bit.bxor(given:byte(i) or 0, TOKEN:byte(i))" in text


def test_dynamic_config_lines_stay_short_at_the_largest_fleet() -> None:
    big = dynamic(size=64, upstreams=servers(64), app_env={f"K{i}": "v" * 50 for i in range(40)})
    assert max(len(line) for line in render("p", big, admin_token="t").splitlines()) < 4096


def test_old_state_lines_mean_reload_mode() -> None:
    old = '# rolling-sandbox-state: {"generation":2,"size":1,"upstreams":[],"rollout":null}\n'
    assert parse_state(old).lb_apply == "reload"


def test_admin_body_round_trip() -> None:
    state = dynamic(generation=7, size=4, upstreams=servers(3), rollout={"kind": "roll", "from": "v1"},
                    app_env={"A": "1"})
    body = admin_body(state)
    lines = body.splitlines()
    assert lines[0] == "7" and lines[2:] == ["10.9.0.1:8000 v1", "10.9.0.2:8000 v1", "10.9.0.3:8000 v1"]
    assert "\n" not in lines[1] and lines[1].startswith("{")  # one JSON line, stored as is by the LB
    assert parse_admin_body(body) == state
    assert parse_admin_body(admin_body(dynamic(generation=1))) == dynamic(generation=1)


@pytest.mark.parametrize("text, answer", [("", None), ("\n", None)])
def test_admin_body_never_put(text: str, answer: None) -> None:
    assert parse_admin_body(text) is answer


@pytest.mark.parametrize("text", [
    "3\n{not json\n",
    "x\n{}\n",
    "3\n",
    # the live address lines disagree with the state they came with
    "1\n" + dynamic(generation=1, upstreams=servers(1)).to_json() + "\n10.9.0.2:8000\n",
    # the generation line disagrees with the state
    "2\n" + dynamic(generation=1).to_json() + "\n",
])
def test_admin_body_unreadable(text: str) -> None:
    with pytest.raises(BalancerError):
        parse_admin_body(text)


def test_parse_in_flight() -> None:
    text = "10.9.0.1:8000 3\n10.9.0.2:8000 0\ngarbage\n10.9.0.3:8000 -1\n\n"
    assert parse_in_flight(text) == {"10.9.0.1:8000": 3, "10.9.0.2:8000": 0, "10.9.0.3:8000": 0}


def test_state_of_60_servers_spans_lines_under_nginx_limit() -> None:
    from sandbox.fleet.balancer import STATE_MORE
    ups = [Upstream(name=f"proj-app-{i}-abcdef", address=f"192.168.100.{i}:8000", version="v1") for i in range(1, 61)]
    state = LbState(generation=3, size=60, upstreams=ups, rollout={"from": "v1", "to": "v2"}, lb_apply="reload")
    text = render("proj", state)
    assert max(len(line) for line in text.splitlines()) < 4096
    assert STATE_MORE in text
    assert parse_state(text) == state


def test_proxy_read_timeout_follows_the_client_timeout() -> None:
    assert lb_read_timeout_s(10.0) == 30 and lb_read_timeout_s(29.5) == 31  # as before, unless the client waits longer
    assert lb_read_timeout_s(90.5) == 92  # NGINX waits longer than the client
    assert "proxy_read_timeout 92s;" in render("p", LbState(upstreams=servers(1), read_timeout_s=92))
    assert "proxy_read_timeout 30s;" in render("p", LbState(upstreams=servers(1)))  # a state from before: as it was
    dynamic_text = render("p", LbState(lb_apply="dynamic", read_timeout_s=61), admin_token="t")
    assert "proxy_read_timeout 61s;" in dynamic_text
