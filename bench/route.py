"""Header and cookie routing (issue 22), with numbers: while a rollout is held where both versions
serve (`roll --pause-at-mixed`), how many requests that name a version are answered by it, what a
version with no server attached gets, and what the load meanwhile saw; in both LB modes.

    .venv/bin/python bench/route.py [--each 200] [--hold 20] [--out bench/ROUTE.md]

For each mode (`--lb-apply dynamic`; `--lb-apply reload --no-client-keepalive`, reload mode's
setting without its keep-alive drops), a fresh 3-server toy fleet rolled v1 -> v2 one at a time at
the default load (20 users, think 50-200 ms, warmup and cooldown 3 s) with `--pause-at-mixed`, so it
holds with one server on v2 and two on v1, all attached. Once paused, from this process, one after
the other: `--each` GETs of `/` with `X-Sandbox-Version: v1`, as many with `v2`, half as many with
the cookie `sandbox_version=v1` and `=v2`, 20 with `X-Sandbox-Version: v9` (no such server), and
`--each` with neither. Each routed answer is checked three ways: the app's `X-App-Version`, the LB
log's `route` for its request id, and that log line's `upstream_addr` being a server of the version
asked (`sandbox status`). The rollout stays paused `--hold` seconds in all, then `sandbox resume`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from provenance import PY, header, publish, shown  # bench/provenance.py (this script's directory)

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
PLANNED = "paused at the first moment both versions serve"
MODES = {"dynamic": ["--lb-apply", "dynamic"], "reload": ["--lb-apply", "reload", "--no-client-keepalive"]}
UNKNOWN = 20


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ask(port: int, headers: dict[str, str]) -> tuple[int, str, str]:
    """(status, X-App-Version or "", body) of one GET /."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("X-App-Version") or "", resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-App-Version") or "", exc.read().decode()


def lb_log(project: str) -> dict[str, dict[str, Any]]:
    out = run(["docker", "exec", f"{project}-lb", "cat", "/var/log/nginx/access.json"]).stdout
    return {r["rid"]: r for r in (json.loads(line) for line in out.splitlines() if line.strip())}


def probe(project: str, port: int, each: int) -> list[dict[str, Any]]:
    """Every kind of request, sent while paused; one result row per kind."""
    status = json.loads(run([*PY, "status", "--project", project, "--json"]).stdout)
    where = {v: {i["address"] for i in status["instances"] if i["attached"] and i["version"] == v}
             for v in ("v1", "v2")}
    tag = secrets.token_hex(3)
    kinds = [("header X-Sandbox-Version: v1", "v1", lambda: {"X-Sandbox-Version": "v1"}, each),
             ("header X-Sandbox-Version: v2", "v2", lambda: {"X-Sandbox-Version": "v2"}, each),
             ("cookie sandbox_version=v1", "v1", lambda: {"Cookie": "sandbox_version=v1"}, each // 2),
             ("cookie sandbox_version=v2", "v2", lambda: {"Cookie": "sandbox_version=v2"}, each // 2),
             ("header X-Sandbox-Version: v9 (none attached)", "v9", lambda: {"X-Sandbox-Version": "v9"}, UNKNOWN),
             ("neither (balanced)", "", dict, each)]
    sent: list[tuple[str, str, str, tuple[int, str, str]]] = []
    for name, wanted, make, n in kinds:
        for k in range(n):
            rid = f"bench-route-{tag}-{len(sent)}-{k}"
            sent.append((name, wanted, rid, ask(port, {**make(), "X-Request-ID": rid})))
    logged = lb_log(project)
    rows = []
    for name, wanted, _, n in kinds:
        mine = [(rid, answer) for kind, _, rid, answer in sent if kind == name]
        answers = Counter(f"{code} {version}".strip() for _, (code, version, _) in mine)
        lines = [logged.get(rid) for rid, _ in mine]
        by_log = sum(1 for line in lines if line and line.get("route") == wanted
                     and (not wanted or line["upstream_addr"] in where.get(wanted, set())
                          or (wanted not in where and line["upstream_addr"] in ("", "-"))))
        named = sum(1 for _, (code, _, body) in mine if code == 503 and f"no server of version {wanted} " in body)
        rows.append({"kind": name, "sent": n, "answers": dict(answers), "log_agrees": by_log,
                     "named_in_503": named if wanted == "v9" else None})
    return rows


def one_mode(mode: str, each: int, hold_s: float, report_dir: Path) -> dict[str, Any]:
    project, port = f"broute{secrets.token_hex(3)}", free_port()
    up = [*PY, "up", "--project", project, "--size", "3", "--port", str(port), *MODES[mode]]
    roll = [*PY, "roll", "--project", project, "--to", "v2", "--pause-at-mixed", "--json", "--report", str(report_dir)]
    try:
        if run(up).returncode != 0:
            raise SystemExit(f"{mode}: up failed")
        proc = subprocess.Popen(roll, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True)
        reader.start()
        deadline = time.monotonic() + 600
        while not any(PLANNED in line for line in err):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{mode}: the rollout never paused (exit {proc.poll()}):\n{''.join(err)[-3000:]}")
            time.sleep(0.2)
        paused_at = time.monotonic()
        rows = probe(project, port, each)
        time.sleep(max(0.0, hold_s - (time.monotonic() - paused_at)))
        resumed = run([*PY, "resume", "--project", project])
        if resumed.returncode != 0:
            raise SystemExit(f"{mode}: resume failed: {resumed.stderr.strip()}")
        out = proc.communicate(timeout=900)[0]
        reader.join(timeout=10)
        report: dict[str, Any] = json.loads(out)
        after = [ask(port, {"X-Sandbox-Version": v})[0] for v in ("v1", "v2")]
    finally:
        run([*PY, "down", "--project", project])
    t0, steps = float(report["steps_t0"]), report["steps"]
    start = next(s for s in steps if s["phase"] == "paused")
    end = next(s for s in steps if s["phase"] == "resumed" and s["t"] >= start["t"])
    load = [json.loads(line) for line in (report_dir / "requests.jsonl").read_text().splitlines() if line.strip()]
    during = [r for r in load if t0 + start["t"] <= r["t"] and (r.get("t_end") or r["t"]) <= t0 + end["t"]]
    return {"mode": mode, "up": up, "roll": roll, "rows": rows, "exit": proc.returncode,
            "outcome": report["outcome"], "dropped": report["requests"]["dropped"],
            "failed_checks": [f"{c['name']} {c['value']} (limit {c['limit']})" for c in report["verdict"]["checks"]
                              if not c["pass"]],
            "total": report["requests"]["total"], "routed": report["exposure"]["requests_routed"],
            "paused_s": round(end["t"] - start["t"], 1), "during": len(during),
            "during_failed": sum(1 for r in during if r["status"] != 200),
            "during_versions": dict(Counter(r.get("version") or "?" for r in during)), "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--each", type=int, default=200, help="requests per version asked by header")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds each rollout stays paused")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_mode(mode, args.each, args.hold, Path(tmp) / mode) for mode in MODES]
    lines = header("Header and cookie routing while paused mixed", "bench/route.py", sys.argv[1:], [
        *(f"{r['mode']}: {shown(r['up'])}, then {shown(r['roll'])} (default load: 20 users, think 50-200 ms, "
          "warmup and cooldown 3 s), `sandbox resume` after the hold" for r in results),
        "answers: status and the app's X-App-Version, counted; log agrees: the LB log's line for the request id "
        "has route = the version asked and an upstream_addr of a server of that version (none for v9)"])
    lines += ["| mode | requests | sent | answers | log agrees | 503 naming the version |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for row in r["rows"]:
            answers = ", ".join(f"{k}: {v}" for k, v in sorted(row["answers"].items()))
            named = "" if row["named_in_503"] is None else str(row["named_in_503"])
            agrees = str(row["log_agrees"]) if row["kind"] != "neither (balanced)" else "(not routed)"
            lines.append(f"| {r['mode']} | {row['kind']} | {row['sent']} | {answers} | {agrees} | {named} |")
    lines += ["", "| mode | held paused s | load requests in the pause (failed) | by version | run dropped (of all) "
              "| exposure.requests_routed | outcome (exit) | checks failed | after: v1, v2 asked by header |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        versions = ", ".join(f"{k} {v}" for k, v in sorted(r["during_versions"].items()))
        lines.append(f"| {r['mode']} | {r['paused_s']} | {r['during']} ({r['during_failed']}) | {versions} | "
                     f"{r['dropped']} ({r['total']}) | {r['routed']} | {r['outcome']} ({r['exit']}) | "
                     f"{'; '.join(r['failed_checks']) or 'none'} | "
                     f"{r['after'][0]}, {r['after'][1]} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
