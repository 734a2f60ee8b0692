"""Where a benchmark's figures came from: the lines every bench/*.md output starts with, and how
the commands behind each figure are shown.

The command that ran, the commit and whether the tree was dirty, the date, the machine and its load
average when the run started. Used by the bench scripts (run as scripts, so this directory is first
on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "sandbox"]  # how the scripts run the sandbox


def shown(args: Sequence[str]) -> str:
    """A command as a results file shows it, in backticks: ``PY ...`` as ``sandbox ...``."""
    words = ["sandbox", *args[len(PY):]] if list(args[:len(PY)]) == PY else list(args)
    return "`" + shlex.join(words) + "`"


def publish(lines: Sequence[str], out: Path | None) -> None:
    """Print a results file's lines, and write them to ``out`` when one is given."""
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def docker_version() -> str:
    try:
        proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return proc.stdout.strip() or "?"


def provenance(script: str, argv: Sequence[str]) -> list[str]:
    """Markdown bullet lines: command, commit (clean or DIRTY), date, machine, load average now."""
    dirty = " (working tree DIRTY)" if git("status", "--porcelain") else " (clean tree)"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [f"- command: `{shlex.join(['python', script, *argv])}`",
            f"- commit: `{git('rev-parse', 'HEAD')}`{dirty}",
            f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores, {mem:.1f} GiB, "
            f"{platform.platform()}, Docker {docker_version()}",
            f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def header(title: str, script: str, argv: Sequence[str], notes: Sequence[str] = ()) -> list[str]:
    """``# title``, a blank line, the provenance lines, the script's own notes (bullets), a blank line."""
    return [f"# {title}", "", *provenance(script, argv), *(f"- {note}" for note in notes), ""]
