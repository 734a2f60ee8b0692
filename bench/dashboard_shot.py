"""A dashboard screenshot during a rollout with long-lived connections open (issue 20).

    .venv/bin/python bench/dashboard_shot.py [--out bench/dashboard_long_lived.png]

Ups 3 toy servers, starts `sandbox roll --to v2 --dashboard --dashboard-port P --ws-users 20
--sse-users 10`, waits on the page's `/api/state` until the rollout is under way with a v2 server
attached beside the v1 ones, then takes the page with headless Chromium (`chromium --headless
--no-sandbox --screenshot=... --window-size=1400,1000 --timeout=5000`), lets the roll finish and
downs the fleet whatever happened. Not `--virtual-time-budget`: the page holds its event stream
open, so virtual time never runs out and Chromium waits forever.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from provenance import PY  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 240.0  # the longest wait for the mixed moment (image builds included)


def state(port: int) -> dict[str, Any] | None:
    """The dashboard's state, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2) as resp:
            value = json.load(resp)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def mixed(snapshot: dict[str, Any]) -> bool:
    """Rolling, with servers of both versions attached (the connections moving over)."""
    versions = snapshot.get("versions") or {}
    return snapshot.get("phase") == "rolling" and bool(versions.get("v1")) and bool(versions.get("v2"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "dashboard_long_lived.png")
    parser.add_argument("--project", default="bench-shot")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    dash = free_port()
    up = [*PY, "up", "--project", args.project, "--port", str(free_port()), "--size", "3"]
    roll = [*PY, "roll", "--project", args.project, "--to", "v2", "--dashboard", "--dashboard-port", str(dash),
            "--ws-users", "20", "--sse-users", "10", "--warmup", "6", "--strategy", "one-at-a-time"]
    try:
        started = subprocess.run(up, cwd=REPO, capture_output=True, text=True, timeout=600)
        if started.returncode:
            print(f"up failed: {started.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
        with subprocess.Popen(roll, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
            deadline = time.monotonic() + WAIT_S
            shot = False
            while proc.poll() is None and time.monotonic() < deadline:
                snapshot = state(dash)
                if snapshot is not None and mixed(snapshot):
                    subprocess.run([chromium, "--headless", "--no-sandbox", f"--screenshot={args.out}",
                                    "--window-size=1400,1000", "--timeout=5000",
                                    f"http://127.0.0.1:{dash}/"], capture_output=True, timeout=120, check=True)
                    shot = True
                    break
                time.sleep(0.2)
            _, err = proc.communicate(timeout=600)
            print(f"roll exit {proc.returncode}: {' '.join(roll[2:])}", file=sys.stderr)
            if not shot:
                print(f"no mixed moment seen; roll's stderr ends: {err.strip()[-300:]}", file=sys.stderr)
                return 1
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    finally:
        subprocess.run([*PY, "down", "--project", args.project], cwd=REPO, capture_output=True, timeout=600)


if __name__ == "__main__":
    sys.exit(main())
