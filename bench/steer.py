"""Steering a running rollout (issue 22), with numbers: how fast `pause`, `resume` and `abort` are
answered, and what users see while a rollout is held paused and after it is aborted.

    .venv/bin/python bench/steer.py [--hold 60] [--out bench/STEER.md]

One 3-server toy fleet (`up --size 3`), rolled v1 -> v2 twice at the default load (20 users, think
50-200 ms, warmup and cooldown 3 s) with `--pause-after-batch 1`, so each rollout holds with batch
1 on v2 and the other two servers on v1, all attached:

- held `--hold` seconds (the controller's state asked over its socket every 2 s meanwhile), then
  `sandbox pause` (already paused: answered at once), then `sandbox resume`: the rollout completes;
- the fleet back on v1 without load, then held 10 s, then `sandbox abort`: the rollout rolls back to v1.

For each command: the socket's round trip as the `sandbox` client measured it (`answer_ms`), and
the whole `sandbox COMMAND` process (its Python start and imports included). For each pause: the
requests sent and answered inside the window from the `paused` event to the one that ended it
(from the run's `requests.jsonl`), those that failed, and the run's dropped total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from provenance import PY, header, publish, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port
from sandbox.rollout import steer

REPO = Path(__file__).resolve().parents[1]
PLANNED = "paused after batch 1 as planned"


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def command(project: str, name: str) -> tuple[dict[str, Any], float]:
    """`sandbox NAME --json`: its answer and the whole process's seconds."""
    t0 = time.monotonic()
    proc = run([*PY, name, "--project", project, "--json"], timeout=120)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sandbox {name} exited {proc.returncode}: {proc.stderr.strip()}")
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer, took


def rollout(project: str, hold_s: float, then: str, report_dir: Path) -> dict[str, Any]:
    """One `roll --pause-after-batch 1`, held ``hold_s`` once paused, then ``then`` (resume, abort)."""
    args = [*PY, "roll", "--project", project, "--to", "v2", "--pause-after-batch", "1", "--json",
            "--report", str(report_dir)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while not any(PLANNED in line for line in err):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the rollout never paused (exit {proc.poll()}):\n{''.join(err)[-3000:]}")
        time.sleep(0.2)
    states: list[float] = []
    held_until = time.monotonic() + hold_s
    while time.monotonic() < held_until:
        answer = asyncio.run(steer.send(project, "state"))
        assert answer["state"] == "paused", answer
        states.append(float(answer["answer_ms"]))
        time.sleep(min(2.0, max(0.0, held_until - time.monotonic())))
    pause, pause_s = command(project, "pause")
    done, done_s = command(project, then)
    out = proc.communicate(timeout=900)[0]
    reader.join(timeout=10)
    report: dict[str, Any] = json.loads(out)
    t0, steps = float(report["steps_t0"]), report["steps"]
    start = next(s for s in steps if s["phase"] == "paused")
    end = next(s for s in steps if s["phase"] in ("resumed", "abort") and s["t"] >= start["t"])
    t_from, t_to = t0 + start["t"], t0 + end["t"]
    rows = [json.loads(line) for line in (report_dir / "requests.jsonl").read_text().splitlines() if line.strip()]
    during = [r for r in rows if t_from <= r["t"] and (r.get("t_end") or r["t"]) <= t_to]
    return {"args": args, "exit": proc.returncode, "outcome": report["outcome"], "paused_s": round(t_to - t_from, 1),
            "during": len(during), "failed": sum(1 for r in during if r["status"] != 200),
            "versions": sorted({r["version"] for r in during if r.get("version")}),
            "dropped": report["requests"]["dropped"], "total": report["requests"]["total"],
            "state_ms": states, "pause_ms": pause["answer_ms"], "pause_s": pause_s,
            then + "_ms": done["answer_ms"], then + "_s": done_s, "then": then}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the first rollout stays paused")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    project, port = f"bsteer{secrets.token_hex(3)}", free_port()
    up = [*PY, "up", "--project", project, "--size", "3", "--port", str(port)]
    back = [*PY, "roll", "--project", project, "--to", "v1", "--no-load"]
    results: list[dict[str, Any]] = []
    try:
        if run(up).returncode != 0:
            raise SystemExit("up failed")
        with tempfile.TemporaryDirectory() as tmp:
            results.append(rollout(project, args.hold, "resume", Path(tmp) / "resume"))
            if run(back).returncode != 0:
                raise SystemExit("the roll back to v1 between the two runs failed")
            results.append(rollout(project, 10.0, "abort", Path(tmp) / "abort"))
        final = json.loads(run([*PY, "status", "--project", project, "--json"]).stdout)
        final_versions = sorted({i["version"] for i in final["instances"] if i["attached"]})
    finally:
        run([*PY, "down", "--project", project])
    lines = header("Steering a running rollout: pause, resume, abort", "bench/steer.py", sys.argv[1:], [
        f"fleet: {shown(up)}; each rollout: {shown(results[0]['args'])} (default load: 20 users, "
        "think 50-200 ms, warmup and cooldown 3 s); between the two, the fleet back on v1 with "
        f"{shown(back)}",
        "answer ms: the socket's round trip as the `sandbox` client measured it; process s: the whole "
        "`sandbox COMMAND` process, its Python start and imports included"])
    lines += ["| then | held paused s | requests in the pause | failed in the pause | versions served in the pause "
              "| run dropped (of total) | outcome (exit) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| `sandbox {r['then']}` | {r['paused_s']} | {r['during']} | {r['failed']} | "
                     f"{', '.join(r['versions'])} | {r['dropped']} ({r['total']}) | {r['outcome']} ({r['exit']}) |")
    lines += ["", "| command | answer ms | process s |", "| --- | --- | --- |"]
    for r in results:
        lines.append(f"| `sandbox pause` (already paused), before {r['then']} | {r['pause_ms']} | "
                     f"{r['pause_s']:.2f} |")
        lines.append(f"| `sandbox {r['then']}` | {r[r['then'] + '_ms']} | {r[r['then'] + '_s']:.2f} |")
    states = [ms for r in results for ms in r["state_ms"]]
    lines += ["", f"- the state asked over the socket while paused, {len(states)} times: median "
              f"{statistics.median(states):.1f} ms, max {max(states):.1f} ms",
              f"- after the abort, the fleet's attached versions: {', '.join(final_versions)}"]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
