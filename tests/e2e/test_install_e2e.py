"""A wheel, not the checkout: ``pip install`` of the built package works from any directory.

The package is built into a wheel and installed (without its dependencies, which pip resolves
as it always does) into a fresh virtual environment that sees the dev environment's
dependencies but not the editable install. From a directory outside the checkout, its
``sandbox`` must find the image sources it ships (the same refs as the checkout's), start a
fleet, roll it under load and remove it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandbox.fleet.images import ImageSet
from tests.conftest import free_port
from tests.e2e.conftest import REPO, assert_passes, project_objects

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bin/`` of a fresh venv holding the wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    wheels, env_dir = root / "dist", root / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("rolling_sandbox-*.whl")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies come from the dev environment; the package itself only from the wheel
    # (a path in a .pth is added to sys.path, but the .pth files there, the editable finder's
    # among them, are not run)
    Path(site, "dev-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return env_dir / "bin"


@pytest.fixture
def project(client: docker.DockerClient, installed: Path, tmp_path: Path) -> Iterator[str]:
    name = f"w{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        subprocess.run([str(installed / "sandbox"), "down", "--project", name], cwd=tmp_path,
                       capture_output=True, timeout=300)
        assert project_objects(client, name) == []


def run(bin_dir: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(bin_dir / "sandbox"), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"sandbox {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_install_builds_rolls_and_removes_from_outside_the_checkout(
    installed: Path, project: str, tmp_path: Path, image_set: ImageSet
) -> None:
    probe = subprocess.run([str(installed / "python"), "-c",
                            "import json, sandbox, sandbox.fleet.images as i; "
                            "print(json.dumps([sandbox.__file__, i.image_set().refs()]))"],
                           cwd=tmp_path, check=True, capture_output=True, text=True)
    where, refs = json.loads(probe.stdout)
    assert not Path(where).resolve().is_relative_to(REPO), where  # the wheel's copy, not the checkout
    assert refs == image_set.refs()  # it ships the same sources the checkout builds from

    run(installed, tmp_path, "images")
    port = str(free_port())
    run(installed, tmp_path, "up", "--project", project, "--size", "2", "--port", port)
    rolled = run(installed, tmp_path, "roll", "--project", project, "--to", "v2", "--users", "5",
                 "--warmup", "1", "--cooldown", "1", "--json", check=False)
    report = assert_passes(rolled)
    assert report["outcome"] == "completed", report
    assert report["requests"]["total"] > 0 and report["requests"]["dropped"] == 0, report["requests"]
    status = json.loads(run(installed, tmp_path, "status", "--project", project, "--json").stdout)
    assert [i["version"] for i in status["instances"]] == ["v2", "v2"]
    run(installed, tmp_path, "down", "--project", project)
