"""The live page in a real browser (Debian's chromium, driven by Selenium through chromium-driver)
while a real rollout runs: the slots, the versions moving from v1 to v2, dropped 0 and the verdict."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.e2e.conftest import REPO, Cli, free_port

pytestmark = pytest.mark.e2e

SIZE = 4
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver (scripts/setup.sh installs it)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_url(log: Path, proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """The dashboard URL the command prints at start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", log.read_text())
        if found:
            return found.group(1)
        assert proc.poll() is None, f"roll exited {proc.returncode} before serving:\n{log.read_text()}"
        time.sleep(0.2)
    raise AssertionError(f"no dashboard URL within {timeout} s:\n{log.read_text()}")


def counts(driver: webdriver.Chrome) -> tuple[int, int]:
    return (int(driver.find_element(By.ID, "count-v1").text or 0),
            int(driver.find_element(By.ID, "count-v2").text or 0))


def test_the_page_follows_a_rollout(cli: Cli, browser: webdriver.Chrome, tmp_path: Path) -> None:
    cli.run("up", "--size", str(SIZE), "--port", str(cli.port), check=True)
    report_dir = tmp_path / "report"
    log = tmp_path / "roll.log"
    port = free_port()
    cmd = [sys.executable, "-m", "sandbox", "roll", "--project", cli.project, "--dashboard", "--dashboard-port",
           str(port), "--report", str(report_dir), "--users", "10", "--warmup", "3", "--cooldown", "2"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = wait_for_url(log, proc)
        assert url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url + "api/state", timeout=5) as r:
            assert r.status == 200
        browser.get(url)
        seen, shot, started, first_updates = follow(browser, proc, report_dir)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    report = json.loads((report_dir / "report.json").read_text())
    failed = [c["name"] for c in report["verdict"]["checks"] if not c["pass"]]
    assert failed == [], (failed, report.get("like_for_like"), output)
    assert proc.returncode == 0, output

    assert seen[0] == (SIZE, 0), seen  # all on v1 when the page opened
    assert any(0 < v1 < SIZE and 0 < v2 < SIZE for v1, v2 in seen), seen  # both versions serving mid-rollout
    assert seen[-1] == (0, SIZE), seen
    assert shot is not None and shot.stat().st_size > 10_000
    assert len(browser.find_elements(By.CSS_SELECTOR, "#slots .slot")) == SIZE
    assert browser.find_element(By.ID, "dropped").text == "0"
    # the page says what the report says: every check held
    assert browser.find_element(By.ID, "verdict").text.startswith("PASS: all 12")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-phase") == "ended"
    updates = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-updates") or 0)
    rate = (updates - first_updates) / (time.monotonic() - started)
    print(f"page updates: {rate:.1f} per second; screenshot: {shot}")
    assert rate >= 1.5  # pushed at least twice a second (the browser sees a little less at the very end)


def follow(browser: webdriver.Chrome, proc: subprocess.Popen[str],
           report_dir: Path) -> tuple[list[tuple[int, int]], Path | None, float, int]:
    """Watch the page until the run ends: the (v1, v2) serving counts as they change, and a
    screenshot taken while both versions serve."""
    deadline = time.monotonic() + 240
    while len(browser.find_elements(By.CSS_SELECTOR, "#slots .slot")) != SIZE:
        assert time.monotonic() < deadline and proc.poll() is None, "the page never showed the slots"
        time.sleep(0.1)
    body = browser.find_element(By.TAG_NAME, "body")
    started, first_updates = time.monotonic(), int(body.get_attribute("data-updates") or 0)
    seen: list[tuple[int, int]] = []
    shot: Path | None = None
    while body.get_attribute("data-phase") != "ended":
        assert time.monotonic() < deadline, f"the page never showed the end; seen {seen}"
        now = counts(browser)
        if not seen or seen[-1] != now:
            seen.append(now)
        if shot is None and 0 < now[0] < SIZE and 0 < now[1] < SIZE:
            report_dir.mkdir(parents=True, exist_ok=True)
            shot = report_dir / "dashboard-mid-rollout.png"
            browser.save_screenshot(str(shot))
        if proc.poll() is not None:
            time.sleep(0.5)  # the last pushes are in; the page keeps what it got
            if body.get_attribute("data-phase") != "ended":
                raise AssertionError(f"roll exited {proc.returncode} but the page never showed the end")
        time.sleep(0.1)
    now = counts(browser)
    if seen[-1] != now:
        seen.append(now)
    return seen, shot, started, first_updates
