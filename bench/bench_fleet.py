"""Benchmark: the fleet itself (issue figures; not a test).

Reports the time of `sandbox up --size 9` with the images present, the memory of one idle app
container, and the requests per second NGINX serves from 9 servers (measured with wrk when it is
installed, `apt-get install wrk`, else with an aiohttp client). With --base-build it also times a
forced rebuild of every image, the offline debootstrap base included.

    .venv/bin/python bench/bench_fleet.py [--size 9] [--base-build]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import docker

from sandbox.ports import free_port

REPO = Path(__file__).resolve().parents[1]
PROJECT = "bench-fleet"


def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


async def aiohttp_rps(url: str, seconds: float = 10, concurrency: int = 64) -> float:
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.get(url) as resp:
                    await resp.read()
                    done += resp.status == 200
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


def wrk_rps(url: str, seconds: int = 10) -> float:
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", url], capture_output=True, text=True).stdout
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    return float(match.group(1)) if match else 0.0


def measure_rps(port: int) -> float:
    url = f"http://127.0.0.1:{port}/api/items/1"
    if shutil.which("wrk"):
        return wrk_rps(url)
    return round(asyncio.run(aiohttp_rps(url)), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--base-build", action="store_true", help="time a forced rebuild of every image")
    args = parser.parse_args()
    result: dict[str, object] = {}
    if args.base_build:
        t0 = time.monotonic()
        proc = sandbox("images", "--force")
        result["image_build_s"] = round(time.monotonic() - t0, 1)
        if proc.returncode:
            raise SystemExit(proc.stderr)
    sandbox("images")
    sandbox("down", "--project", PROJECT)
    port = free_port()
    t0 = time.monotonic()
    proc = sandbox("up", "--project", PROJECT, "--size", str(args.size), "--port", str(port))
    result["up_s"] = round(time.monotonic() - t0, 2)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    try:
        client = docker.from_env()
        time.sleep(5)
        app = client.containers.list(filters={"label": [f"io.rolling-sandbox.project={PROJECT}",
                                                        "io.rolling-sandbox.role=app"]})[0]
        stats = app.stats(stream=False)
        mem = stats["memory_stats"]
        cache = mem.get("stats", {}).get("cache", 0) or mem.get("stats", {}).get("inactive_file", 0)
        result["idle_app_memory_mib"] = round((mem["usage"] - cache) / 2**20, 1)
        result["rps_tool"] = "wrk -t2 -c64" if shutil.which("wrk") else "aiohttp, 64 connections"
        result["rps"] = measure_rps(port)
    finally:
        sandbox("down", "--project", PROJECT)
    # the same fleet with client keep-alive on at the load balancer (off by default: see README)
    port = free_port()
    sandbox("up", "--project", PROJECT, "--size", str(args.size), "--port", str(port), "--client-keepalive")
    try:
        result["rps_client_keepalive"] = measure_rps(port)
    finally:
        sandbox("down", "--project", PROJECT)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
