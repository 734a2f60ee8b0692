from __future__ import annotations

import pytest
from aiohttp import web

from sandbox.fleet.probes import Probe, parse_metrics


def test_parse_metrics_sums_labelled_samples() -> None:
    text = """# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total 41
app_requests_in_flight 2
app_responses_total{code="200"} 40
app_responses_total{code="500"} 1
app_info{version="v2"} 1
garbage line
"""
    m = parse_metrics(text)
    assert m["app_requests_total"] == 41 and m["app_requests_in_flight"] == 2
    assert m["app_responses_total"] == 41 and m["app_info"] == 1
    assert "garbage" not in m


@pytest.mark.asyncio
async def test_a_failed_readiness_check_says_what_it_saw_and_a_pass_forgets_it() -> None:
    answers = [web.json_response({"status": "no-session-store"}, status=503),
               web.json_response({"status": "ready", "version": "v2"}),
               web.json_response({"status": "ready", "version": "v1"})]

    async def healthz(request: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    address = f"127.0.0.1:{port}"
    try:
        async with Probe() as probe:
            assert probe.last_failure(address) is None
            assert not await probe.ready(address, "v1")
            assert probe.last_failure(address) == "GET /healthz answered 503 '{\"status\": \"no-session-store\"}'"
            assert not await probe.ready(address, "v1")
            assert "not version v1" in (probe.last_failure(address) or "")
            assert await probe.ready(address, "v1")
            assert probe.last_failure(address) is None
    finally:
        await runner.cleanup()
    async with Probe(timeout_s=0.5) as probe:  # nothing listens there now
        assert not await probe.accepts(address)
        assert (probe.last_failure(address) or "").startswith("a TCP connection was not accepted: ")
