from __future__ import annotations

from sandbox.fleet.probes import parse_metrics


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
