"""Image refs from input hashes, the in-place code tar, and the base build's choices (no Docker)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from sandbox.errors import ImageBuildError, UsageError
from sandbox.fleet import images

REAL = images.SOURCES


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the build inputs, installed as images.SOURCES (laid out as in the checkout)."""
    for rel, src in (("app_v1", REAL.app["v1"]), ("app_v2", REAL.app["v2"]), ("lb", REAL.lb)):
        shutil.copytree(src, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sandbox" / "appserver").mkdir(parents=True)
    for path in REAL.harness.glob("*.py"):
        shutil.copy(path, tmp_path / "sandbox" / "appserver" / path.name)
    monkeypatch.setattr(images, "SOURCES", images.Sources(
        harness=tmp_path / "sandbox" / "appserver",
        app={"v1": tmp_path / "app_v1", "v2": tmp_path / "app_v2"}, lb=tmp_path / "lb"))
    return tmp_path


def test_refs_are_stable_and_shaped() -> None:
    a, b = images.image_set(), images.image_set()
    assert a == b
    assert a.base.startswith("rolling-sandbox/base:") and len(a.base.split(":")[1]) == 12
    assert a.app["v1"].startswith("rolling-sandbox/app:v1-")
    assert a.app["v2"].startswith("rolling-sandbox/app:v2-")
    assert a.lb.startswith("rolling-sandbox/lb:")
    assert a.refs() == [a.base, a.app["v1"], a.app["v2"], a.lb]


def test_copy_of_inputs_gives_same_refs(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied = images.image_set()
    monkeypatch.setattr(images, "SOURCES", REAL)
    assert images.image_set() == copied


def test_version_file_change_moves_only_that_app(repo: Path) -> None:
    before = images.image_set()
    (repo / "app_v2" / "app.py").write_text("VERSION = 'v2'\n")
    after = images.image_set()
    assert after.app["v2"] != before.app["v2"]
    assert (after.base, after.app["v1"], after.lb) == (before.base, before.app["v1"], before.lb)


def test_harness_change_moves_both_apps(repo: Path) -> None:
    before = images.image_set()
    with (repo / "sandbox" / "appserver" / "server.py").open("a") as f:
        f.write("\n# changed\n")
    after = images.image_set()
    assert after.app["v1"] != before.app["v1"] and after.app["v2"] != before.app["v2"]
    assert (after.base, after.lb) == (before.base, before.lb)


def test_lb_dockerfile_change_moves_only_lb(repo: Path) -> None:
    before = images.image_set()
    with (repo / "lb" / "Dockerfile").open("a") as f:
        f.write("# changed\n")
    after = images.image_set()
    assert after.lb != before.lb
    assert (after.base, after.app) == (before.base, before.app)


def test_base_inputs_change_moves_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    before = images.image_set()
    monkeypatch.setattr(images, "PACKAGES", (*images.PACKAGES, "curl"))
    after = images.image_set()
    assert after.base != before.base
    assert after.app["v1"] != before.app["v1"] and after.lb != before.lb


def test_missing_input_is_an_image_build_error(repo: Path) -> None:
    (repo / "app_v1" / "VERSION").unlink()
    with pytest.raises(ImageBuildError, match="VERSION"):
        images.image_set()


def _members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        out = {}
        for info in tar.getmembers():
            f = tar.extractfile(info)
            assert f is not None
            out[info.name] = (info, f.read())
        return out


def test_app_code_tar_contents_and_owner() -> None:
    members = _members(images.app_code_tar("v2"))
    assert set(members) == {"app.py", "VERSION", "migrate.py", "env.json"}  # v2 ships its migrations
    for info, _ in members.values():
        assert (info.uid, info.gid, info.mode) == (10001, 10001, 0o644)
        assert info.isfile() and info.mtime > 0
    assert members["app.py"][1] == (REAL.app["v2"] / "app.py").read_bytes()
    assert members["VERSION"][1].strip() == b"v2"
    assert json.loads(members["env.json"][1]) == {}


def test_app_code_tar_env_json() -> None:
    members = _members(images.app_code_tar("v2", {"APP_BREAKING": "1", "APP_LATENCY_MS": "5"}))
    assert json.loads(members["env.json"][1]) == {"APP_BREAKING": "1", "APP_LATENCY_MS": "5"}
    assert members["env.json"][0].uid == 10001


def test_app_code_tar_rejects_bad_input() -> None:
    with pytest.raises(UsageError, match="v3"):
        images.app_code_tar("v3")
    with pytest.raises(UsageError):
        images.app_code_tar("v1", {"APP_LATENCY_MS": 5})  # type: ignore[dict-item]


def test_debian_mirror_from_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.MIRROR_ENV, raising=False)
    assert images.debian_mirror(tmp_path) is None
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: https://other.example/node_20.x\nSuites: nodistro\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert images.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://old.example/debian bookworm main\n"
    )
    assert images.debian_mirror(tmp_path) == "http://old.example/debian"
    monkeypatch.setenv(images.MIRROR_ENV, "http://override.example/debian")
    assert images.debian_mirror(tmp_path) == "http://override.example/debian"


class FakeImage:
    def __init__(self, owner: FakeImages) -> None:
        self.owner = owner

    def tag(self, repo: str, tag: str) -> bool:
        self.owner.tags.append(f"{repo}:{tag}")
        return True


class FakeImages:
    def __init__(self, present: set[str]) -> None:
        self.present = present
        self.tags: list[str] = []

    def get(self, ref: str) -> FakeImage:
        if ref not in self.present:
            raise docker.errors.ImageNotFound(ref)
        return FakeImage(self)


class FakeAPI:
    def __init__(self) -> None:
        self.builds: list[dict[str, Any]] = []

    def build(self, **kwargs: Any) -> Any:
        self.builds.append(kwargs)
        raise docker.errors.APIError("pull access denied for debian, repository does not exist")


class FakeClient:
    def __init__(self, present: set[str]) -> None:
        self.images = FakeImages(present)
        self.api = FakeAPI()


def test_missing_images_and_nothing_to_build() -> None:
    refs = images.image_set()
    client = FakeClient({refs.base, refs.lb})
    assert images.missing_images(client) == [refs.app["v1"], refs.app["v2"]]  # type: ignore[arg-type]
    everything = FakeClient(set(refs.refs()))
    lines: list[str] = []
    assert images.ensure_images(everything, log=lines.append) == refs  # type: ignore[arg-type]
    assert everything.api.builds == [] and lines == []
    # the stable tags compose/docker-compose.yml uses point at the current set
    assert sorted(everything.images.tags) == sorted(images.ALIASES.values())


def test_bad_base_method_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(images.METHOD_ENV, "magic")
    with pytest.raises(UsageError, match=images.METHOD_ENV):
        images.ensure_images(FakeClient(set()))  # type: ignore[arg-type]


def test_forced_debootstrap_without_debootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(images.METHOD_ENV, "debootstrap")
    monkeypatch.setattr(images, "_debootstrap_unavailable", lambda: "debootstrap is not installed")
    with pytest.raises(ImageBuildError, match="debootstrap is not installed"):
        images.ensure_images(FakeClient(set()))  # type: ignore[arg-type]


def test_auto_falls_back_to_pull_and_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.METHOD_ENV, raising=False)
    monkeypatch.setattr(images, "_debootstrap_unavailable", lambda: "debootstrap needs root")
    client = FakeClient(set())
    with pytest.raises(ImageBuildError) as info:
        images.ensure_images(client, log=lambda _: None)  # type: ignore[arg-type]
    message = str(info.value)
    assert "debootstrap needs root" in message and "debian:bookworm-slim" in message
    assert "\n" not in message
    (build,) = client.api.builds
    assert build["pull"] is False and build["rm"] is True and build["forcerm"] is True
    labels = build["labels"]
    assert labels[images.LABEL_MANAGED] == "true" and labels[images.LABEL_ROLE] == "image"
    assert labels[images.LABEL_INPUTS] == images.base_inputs()
