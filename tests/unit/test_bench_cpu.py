"""bench/cpu.py: which group a process belongs to, and CPU seconds counted once per process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import cpu  # bench/ is not a package: its scripts import each other by name


@pytest.mark.parametrize(("cmdline", "group"), [
    ("/work/.venv/bin/python -m locust -f a.py,b.py --processes 2", "locust"),
    ("python3 -m appserver.server", "apps"),
    ("python3 -m appserver.supervisor", "apps"),
    ("nginx: worker process", "nginx"),
    ("/usr/sbin/dockerd -H unix:///var/run/docker.sock", "docker"),
    ("/usr/bin/containerd-shim-runc-v2 -namespace moby -id abc", "docker"),
    ("/work/.venv/bin/python -m sandbox roll --to v2", "controller"),
    ("wrk -t2 -c50 http://127.0.0.1:8080/", "other"),
    ("", "other"),
])
def test_group_of(cmdline: str, group: str) -> None:
    assert cpu.group_of(cmdline) == group


def test_seconds_count_from_the_first_sample_or_from_birth() -> None:
    split = cpu.Split(start={"1": 5.0, "2": 0.0}, last={"1": 7.5, "2": 1.25},
                      group={"1": "apps", "2": "locust"}, wall_s=2.0)
    assert split.seconds()["apps"] == 2.5  # only what it used inside the window
    assert split.seconds()["locust"] == 1.25  # born inside it: all of its time
    assert split.cores() == {**dict.fromkeys(cpu.GROUPS, 0.0), "apps": 1.25, "locust": 0.62}
    assert cpu.describe(split.cores()) == "apps 1.25, locust 0.62 (total 1.87)"


def test_a_busy_loop_is_seen() -> None:
    with cpu.cpu_split(interval=0.05) as split:
        end = os.times().elapsed + 0.3
        while os.times().elapsed < end:
            pass
    assert split.seconds()["other"] >= 0.15  # pytest itself is "other"; it spun for 0.3 s
