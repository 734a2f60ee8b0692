"""The Locust command line: a master with workers listens on a port of its own, not Locust's fixed 5557."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from sandbox.config import Settings
from sandbox.errors import UsageError
from sandbox.load.run import LoadRun, LoadSettings


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_master_and_workers_share_a_free_port(tmp_path: Path) -> None:
    cmd = LoadRun("http://127.0.0.1:1", LoadSettings(workers=2), tmp_path / "rows.jsonl").command()
    port = _flag(cmd, "--master-bind-port")
    assert _flag(cmd, "--master-port") == port and port != "5557"
    with socket.socket() as sock:  # free right now: two runs side by side no longer collide
        sock.bind(("127.0.0.1", int(port)))


def test_a_single_process_has_no_master_port(tmp_path: Path) -> None:
    cmd = LoadRun("http://127.0.0.1:1", LoadSettings(workers=1), tmp_path / "rows.jsonl").command()
    assert "--master-bind-port" not in cmd and "--processes" not in cmd


def test_paths_pick_the_path_users_and_reach_them(tmp_path: Path) -> None:
    run = LoadRun("http://127.0.0.1:1", LoadSettings(paths=("/delay/1", "/get")), tmp_path / "rows.jsonl")
    assert run.locustfile.name == "paths_locustfile.py"
    assert json.loads(run.environment()["ROLLING_SANDBOX_PATHS"]) == ["/delay/1", "/get"]
    own = tmp_path / "mine.py"
    own.write_text("")
    assert LoadRun("http://x", LoadSettings(paths=("/a",), locustfile=own), tmp_path / "r").locustfile == own


def test_bad_path_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^path: 'get' must start with /"):
        Settings(paths=("get",))
