"""Unit tests of sandbox.load.rows: contracts, rows, the in-flight registry.

No locust here: loadrows must stay importable without gevent.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_type_hints

import pytest

from sandbox.load import rows as loadrows
from sandbox.load.rows import (
    ROW_KEYS,
    UNANSWERED_ERROR,
    Recorder,
    RowWriter,
    answer_fields,
    check_contract,
    complete_row,
    dump_row,
    env_float,
    error_text,
    exception_name,
    new_row,
    parse_json,
    parse_rows,
    read_counts,
    v2_mode_from_env,
)
from sandbox.results.records import RequestRow, is_load_rid, new_load_rid

V1_BODY = {"id": 7, "name": "lamp", "price": 12.5}
V2_COMPAT_BODY = {"id": 7, "name": "lamp", "price": 12.5, "currency": "EUR"}
V2_BREAK_BODY = {"id": 7, "title": "lamp", "price": 12.5, "currency": "EUR"}


# ----------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    ("served", "mode", "expects", "want"),
    [
        # compatible v2: an added field breaks nobody
        ("v1", "compatible", "v1", "ok"),
        ("v1", "compatible", "v2", "ok"),
        ("v2", "compatible", "v1", "ok"),
        ("v2", "compatible", "v2", "ok"),
        # breaking v2: old clients break on v2, new clients break on v1 (downgrade)
        ("v1", "breaking", "v1", "ok"),
        ("v1", "breaking", "v2", "violation"),
        ("v2", "breaking", "v1", "violation"),
        ("v2", "breaking", "v2", "ok"),
    ],
)
def test_contract_table(served: str, mode: str, expects: str, want: str) -> None:
    v2_body = V2_COMPAT_BODY if mode == "compatible" else V2_BREAK_BODY
    body = V1_BODY if served == "v1" else v2_body
    assert check_contract(body, expects, mode) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [None, [], "x", 3, {"id": 1}, {"name": "a", "price": 1}])
def test_contract_bad_bodies_are_violations(body: object) -> None:
    for expects in ("v1", "v2"):
        for mode in ("compatible", "breaking"):
            assert check_contract(body, expects, mode) == "violation"  # type: ignore[arg-type]


def test_parse_json() -> None:
    assert parse_json(b'{"id": 1}') == {"id": 1}
    assert parse_json("[1]") == [1]
    assert parse_json(b"") is None
    assert parse_json(None) is None
    assert parse_json(b"<html>") is None
    assert parse_json(b"\xff\xfe") is None


def test_env_settings() -> None:
    assert v2_mode_from_env({}) == "compatible"
    assert v2_mode_from_env({"ROLLING_SANDBOX_V2_MODE": "Breaking"}) == "breaking"
    assert v2_mode_from_env({"ROLLING_SANDBOX_V2_MODE": "nonsense"}) == "compatible"
    assert env_float("X", 10.0, {}) == 10.0
    assert env_float("X", 10.0, {"X": "2.5"}) == 2.5
    assert env_float("X", 10.0, {"X": "-1"}) == 10.0
    assert env_float("X", 10.0, {"X": "abc"}) == 10.0
    assert env_float("X", 10.0, {"X": "nan"}) == 10.0


# ----------------------------------------------------------------------- answers


def test_answer_fields_case_insensitive_and_absent() -> None:
    f = answer_fields(
        {"x-app-version": "v2", "X-Instance": "app-3/ab12", "X-Session-State": " new "}
    )
    assert (f.version, f.instance, f.session) == ("v2", "app-3/ab12", "new")
    f = answer_fields({"Content-Type": "text/plain", "X-App-Version": ""})
    assert (f.version, f.instance, f.session) == (None, None, None)
    assert answer_fields(None).version is None


def _wrapped(outer: type[BaseException], inner: BaseException) -> BaseException:
    """Mimic requests/urllib3 wrapping: exception args and __cause__."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer("wrapped", e) from e
    except BaseException as e:
        return e


class ReadTimeout(Exception):
    pass


class ConnectionError_(Exception):  # requests.exceptions.ConnectionError look-alike
    pass


class MaxRetryError(Exception):
    def __init__(self, reason: BaseException) -> None:
        super().__init__("max retries")
        self.reason = reason


def test_exception_names() -> None:
    reset = _wrapped(ConnectionError_, ConnectionResetError(104, "Connection reset by peer"))
    assert exception_name(reset) == "ConnectionResetError"
    refused = ConnectionError_(MaxRetryError(_wrapped(OSError, ConnectionRefusedError(111, "x"))))
    assert exception_name(refused) == "ConnectionRefusedError"
    remote = _wrapped(ConnectionError_, http.client.RemoteDisconnected("closed"))
    assert exception_name(remote) == "RemoteDisconnected"
    assert exception_name(_wrapped(ReadTimeout, TimeoutError("timed out"))) == "ReadTimeout"
    assert exception_name(ValueError("x")) == "ValueError"


def test_error_text() -> None:
    assert error_text(200) is None
    assert error_text(404) is None
    assert error_text(502) == "HTTP 502"
    assert error_text(500) == "HTTP 500"
    assert error_text(0, ConnectionResetError()) == "ConnectionResetError"
    assert error_text(0) == "no answer"


# ----------------------------------------------------------------------- rows


def test_row_keys_match_request_row() -> None:
    assert set(ROW_KEYS) == set(get_type_hints(RequestRow))


def test_row_from_answer_headers() -> None:
    row = new_row(t=100.0, user="u3", rid="abc", method="get", name="/api/items/[id]")
    assert row["status"] == 0 and row["t_end"] is None and row["method"] == "GET"
    done = complete_row(
        row,
        t_end=100.25,
        latency_ms=250.0004,
        status=200,
        headers={"X-App-Version": "v1", "X-Instance": "app-1/n0", "X-Session-State": "resumed"},
        contract="ok",
    )
    assert done == {
        "t": 100.0, "t_end": 100.25, "user": "u3", "rid": "abc", "method": "GET",
        "name": "/api/items/[id]", "status": 200, "version": "v1", "instance": "app-1/n0",
        "session": "resumed", "latency_ms": 250.0, "error": None, "contract": "ok",
        "unanswered": False,
    }  # fmt: skip
    assert row["status"] == 0  # the pending row is not mutated
    five = complete_row(row, t_end=101.0, latency_ms=1.0, status=502, headers={})
    assert five["error"] == "HTTP 502" and five["version"] is None
    dead = complete_row(row, t_end=101.0, latency_ms=1.0, status=0, exc=ConnectionResetError())
    assert dead["error"] == "ConnectionResetError" and dead["status"] == 0


def test_dump_and_parse_rows_round_trip() -> None:
    row = new_row(t=1.5, user="u1", rid="r", method="POST", name="/api/cart")
    line = dump_row(row)
    assert "\n" not in line
    assert list(json.loads(line)) == list(ROW_KEYS)
    rows = parse_rows([line.encode(), b"", b"{not json", b"[1,2]", line])
    assert rows == [row, row]


# ----------------------------------------------------------------------- registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[Recorder, Path, FakeClock]]:
    path = tmp_path / "rows.jsonl"
    clock = FakeClock()
    rec = Recorder(RowWriter(path), clock=clock, perf=clock)
    yield rec, path, clock
    rec.writer.close()


def _file_rows(path: Path) -> list[RequestRow]:
    return parse_rows(path.read_bytes().splitlines())


def test_registry_writes_each_request_once(
    recorder: tuple[Recorder, Path, FakeClock],
) -> None:
    rec, path, clock = recorder
    a = rec.begin(user="u1", rid="a", method="GET", name="/")
    b = rec.begin(user="u2", rid="b", method="GET", name="/")
    assert rec.in_flight == 2
    assert not path.exists() or path.read_bytes() == b""  # nothing until a request ends
    clock.now += 0.5
    row = rec.finish(a, status=200, headers={"X-App-Version": "v2"})
    assert row is not None and row["latency_ms"] == 500.0 and row["t_end"] == 1000.5
    assert rec.finish(a, status=200) is None  # never twice
    assert rec.fail(a, ConnectionResetError()) is None
    err = rec.fail(b, ConnectionResetError())
    assert err is not None and err["error"] == "ConnectionResetError"
    rows = _file_rows(path)
    assert [r["rid"] for r in rows] == ["a", "b"]
    assert rec.in_flight == 0


def test_registry_unanswered_at_stop(recorder: tuple[Recorder, Path, FakeClock]) -> None:
    rec, path, clock = recorder
    done = rec.begin(user="u1", rid="done", method="GET", name="/")
    slow = rec.begin(user="u2", rid="slow", method="GET", name="/api/items/[id]")
    slow2 = rec.begin(user="u3", rid="slow2", method="POST", name="/api/cart")
    rec.finish(done, status=200)
    clock.now += 30
    flushed = rec.flush_unanswered()
    assert {r["rid"] for r in flushed} == {"slow", "slow2"}
    for r in flushed:
        assert r["unanswered"] is True
        assert r["status"] == 0 and r["t_end"] is None and r["latency_ms"] is None
        assert r["error"] == UNANSWERED_ERROR
        assert r["t"] == 1000.0
    # an answer arriving after the stop does not write the request a second time
    assert rec.finish(slow, status=200) is None
    assert rec.fail(slow2, ConnectionResetError()) is None
    assert rec.flush_unanswered() == []
    rows = _file_rows(path)
    assert sorted(r["rid"] for r in rows) == ["done", "slow", "slow2"]
    assert [r["unanswered"] for r in rows if r["rid"] == "done"] == [False]


def test_writer_flushes_each_row_and_none_path_drops(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    w = RowWriter(path)
    w.write(new_row(t=1.0, user="u1", rid="x", method="GET", name="/"))
    # readable by another reader at once, before close
    assert path.read_bytes().count(b"\n") == 1
    w.write(new_row(t=2.0, user="u1", rid="y", method="GET", name="/"))
    assert path.read_bytes().count(b"\n") == 2
    w.close()
    w2 = RowWriter(None)
    w2.write(new_row(t=1.0, user="u1", rid="x", method="GET", name="/"))
    assert w2.written == 0


def test_held_answer_is_written_as_answered(recorder: tuple[Recorder, Path, FakeClock]) -> None:
    # catch_response: the answer arrives, the user's block judges it later
    rec, path, clock = recorder
    judged = rec.begin(user="u1", rid="judged", method="GET", name="/")
    held = rec.begin(user="u2", rid="held", method="GET", name="/")
    clock.now += 0.25
    first = rec.answer(judged, status=200, headers={"X-App-Version": "v1"})
    assert first is not None and first["latency_ms"] == 250.0
    rec.answer(held, status=503)
    clock.now += 5  # the user's code takes its time; latency stays the server's
    assert rec.answer(judged, status=500) == first  # the first answer counts
    row = rec.finish(judged, contract="violation")
    assert row is not None
    assert (row["status"], row["version"], row["latency_ms"], row["contract"]) == (200, "v1", 250.0, "violation")
    assert rec.in_flight == 1
    # a stop inside the user's block: the request was answered, not unanswered
    flushed = rec.flush_unanswered()
    assert [(r["rid"], r["status"], r["unanswered"], r["error"]) for r in flushed] == [
        ("held", 503, False, "HTTP 503")
    ]
    assert rec.finish(held) is None and rec.answer(held, status=200) is None
    assert sorted(r["rid"] for r in _file_rows(path)) == ["held", "judged"]


def test_fail_after_an_answer_keeps_the_answer(recorder: tuple[Recorder, Path, FakeClock]) -> None:
    rec, path, _ = recorder
    token = rec.begin(user="u1", rid="a", method="GET", name="/")
    rec.answer(token, status=200)
    row = rec.fail(token, ValueError("the user's code raised in its block"))
    assert row is not None and row["status"] == 200 and row["error"] is None
    assert rec.finish(token, status=0) is None
    assert len(_file_rows(path)) == 1


def test_record_untracked_rows(recorder: tuple[Recorder, Path, FakeClock]) -> None:
    rec, path, _ = recorder
    row = loadrows.untracked_row(
        t_end=10.5, latency_ms=500.0, start_time=None, user="w1-g7f", method="get", name="own",
        status=200, headers={"x-request-id": "nginx-rid", "X-App-Version": "v2"},
    )  # fmt: skip
    assert (row["t"], row["t_end"], row["rid"], row["method"], row["version"]) == (10.0, 10.5, "nginx-rid", "GET", "v2")
    failed = loadrows.untracked_row(
        t_end=20.0, latency_ms=None, start_time=19.0, user="u", method="GET", name="own", status=0,
        headers={"X-App-Version": "v1"}, exc=ConnectionResetError(),
    )  # fmt: skip
    assert (failed["t"], failed["rid"], failed["version"], failed["error"]) == (19.0, "", None, "ConnectionResetError")
    rec.record(row)
    assert rec.in_flight == 0 and rec.flush_unanswered() == []
    assert [r["rid"] for r in _file_rows(path)] == ["nginx-rid"]


@pytest.mark.parametrize(
    ("status", "failed_by_user", "want"),
    [(200, True, "violation"), (302, True, "violation"), (399, True, "violation"),
     (400, True, None), (503, True, None), (0, True, None), (200, False, None), (500, False, None)],
)  # fmt: skip
def test_event_contract(status: int, failed_by_user: bool, want: str | None) -> None:
    assert loadrows.event_contract(status, failed_by_user) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [("50-200", (0.05, 0.2)), ("0", (0.0, 0.0)), (" 100 ", (0.1, 0.1)), ("0-10", (0.0, 0.01)), (250, (0.25, 0.25))],
)
def test_parse_think_ms(text: str, want: tuple[float, float]) -> None:
    assert loadrows.parse_think_ms(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["", "fast", "200-50", "-5", "1-2-3", "nan", "70000", "5-"])
def test_parse_think_ms_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="milliseconds"):
        loadrows.parse_think_ms(text)


def test_writer_shared_by_forked_processes(tmp_path: Path) -> None:
    # Locust's workers are forked after the writer exists: each must get its own
    # descriptor and every row must land whole, none interleaved.
    path = tmp_path / "shared.jsonl"
    w = RowWriter(path)
    w.write(new_row(t=0.0, user="parent", rid="p0", method="GET", name="/"))
    children = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                for i in range(300):
                    w.write(new_row(t=float(i), user=f"w{n}", rid=f"{n}-{i}-" + "x" * 200, method="GET", name="/"))
                w.close()
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    w.close()
    lines = path.read_bytes().splitlines()
    rows = parse_rows(lines)
    assert len(lines) == len(rows) == 901  # every line is a whole row
    assert len({r["rid"] for r in rows}) == 901


def test_loadrows_does_not_import_locust() -> None:
    assert loadrows.__name__ == "sandbox.load.rows"
    assert not any(m == "locust" or m.startswith(("locust.", "gevent")) for m in sys.modules)


def test_multi_process_locust_gets_its_own_master_port() -> None:
    from sandbox.load.run import LoadRun, LoadSettings
    cmd = LoadRun("http://127.0.0.1:1", LoadSettings(users=4, workers=2), Path("/tmp/rows.jsonl")).command()
    bind, connect = cmd[cmd.index("--master-bind-port") + 1], cmd[cmd.index("--master-port") + 1]
    assert bind == connect and bind != "5557"
    assert "--master-port" not in LoadRun("http://127.0.0.1:1", LoadSettings(workers=1), Path("/tmp/r")).command()


def test_the_recorder_counts_what_it_sent_and_wrote_and_the_controller_reads_the_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "requests.jsonl"
    rec = Recorder(RowWriter(path))
    for i in range(3):
        rec.finish(rec.begin(user="u", rid=f"r{i}", method="GET", name="/"), status=200)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    rec.finish(rec.begin(user="u", rid="lost", method="GET", name="/"), status=200)  # logged, not raised
    monkeypatch.undo()
    rec.write_count()
    assert (rec.sent, rec.writer.written) == (4, 3)
    assert read_counts(path) == {"sent": 4, "written": 3}
    assert read_counts(path) is None  # read once: the files are gone, a killed process leaves none
    assert len(parse_rows(path.read_bytes().splitlines())) == 3


def test_the_load_generators_request_ids_are_told_from_nginx_own() -> None:
    rid = new_load_rid()
    assert is_load_rid(rid) and rid.startswith("ls-") and len(rid) == 35
    assert not is_load_rid(os.urandom(16).hex())  # NGINX's $request_id for a request without one (probes)
    assert not is_load_rid("nginx-rid") and not is_load_rid(rid + "0")
