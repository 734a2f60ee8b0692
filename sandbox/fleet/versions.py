"""The fleet's versions: names the user picks (``v1``, ``1.4.2``, ``green``) mapped to local images.

Without ``--image``/``--build`` (or a ``[versions]`` table) the map is the built-in toy
app's ``{"v1": ..., "v2": ...}``. The map a fleet was started with is written into a label
of its load balancer container (``LABEL_VERSIONS``), so ``roll``, ``rollback`` and
``status`` from a fresh process know it. Everything here that can fail on user input
raises :class:`~sandbox.errors.UsageError` before anything is created.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import docker
import docker.errors

from sandbox.errors import ImageBuildError, UsageError
from sandbox.fleet import labels as L

log = logging.getLogger("sandbox.fleet.versions")

TOY_VERSIONS = ("v1", "v2")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# a Docker image reference: [host[:port]/]path[:tag][@digest], path components lower case
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?/)?"
REF_RE = re.compile(rf"^{_HOST}{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
                    r"(?:@sha256:[0-9a-f]{64})?$")
ROLE_APP_IMAGE = "app-image"  # an image built from the user's --build directory


def check_name(name: str, what: str = "version") -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"{what}: {name!r} must be 1-64 letters, digits, dots, dashes or underscores")
    return name


def parse_pairs(pairs: list[str] | tuple[str, ...], flag: str) -> dict[str, str]:
    """``["green=myapp:2", ...]`` -> ``{"green": "myapp:2"}``; UsageError naming ``flag`` if malformed."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value:
            raise UsageError(f"{flag}: {pair!r} must look like NAME={'DIR' if flag == 'build' else 'IMAGE'}")
        check_name(name, flag)
        if name in out:
            raise UsageError(f"{flag}: version {name!r} is given twice")
        out[name] = value
    return out


def check_declared(images: Mapping[str, str], builds: Mapping[str, str]) -> None:
    """Names, references and directories well formed, each name declared once."""
    for name, ref in images.items():
        check_name(name, "image")
        if not REF_RE.match(ref):
            raise UsageError(f"image: {name}={ref!r} is not a valid image reference")
    for name, directory in builds.items():
        check_name(name, "build")
        if name in images:
            raise UsageError(f"build: version {name!r} is also given as --image")
        if not (Path(directory) / "Dockerfile").is_file():
            raise UsageError(f"build: {name}={directory}: no Dockerfile in that directory")


def pick(versions: Mapping[str, str], wanted: str, *, default_last: bool, what: str) -> str:
    """``wanted`` if it is one of ``versions``; "" means the first declared (the last with ``default_last``)."""
    names = list(versions)
    if not wanted:
        return names[-1] if default_last else names[0]
    if wanted not in versions:
        raise UsageError(f"{what}: unknown version {wanted!r}; this fleet has {', '.join(names)}")
    return wanted


def build_ref(project: str, name: str) -> str:
    return f"rolling-sandbox-user/{project.lower()}:{name.lower()}"


def resolve(client: docker.DockerClient, project: str, images: Mapping[str, str], builds: Mapping[str, str],
            say: Callable[[str], None] = log.info) -> dict[str, str]:
    """Check each ``--image`` exists locally, then build each ``--build`` directory; ``{name: ref}``.

    A missing image raises UsageError before any build or container; a failed build, ImageBuildError.
    """
    for name, ref in images.items():
        try:
            client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise UsageError(f"image: {name}={ref}: no such local image (build or load it first)") from None
    out = dict(images)
    for name, directory in builds.items():
        out[name] = build_dir(client, project, name, Path(directory), say)
    return out


def build_dir(client: docker.DockerClient, project: str, name: str, directory: Path,
              say: Callable[[str], None] = log.info) -> str:
    """``docker build`` of ``directory`` (its Dockerfile), tagged and labelled as this project's image."""
    ref = build_ref(project, name)
    say(f"building {ref} from {directory}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(directory), arcname=".")
    buf.seek(0)
    labels = L.project_labels(project, ROLE_APP_IMAGE, **{L.LABEL_VERSION: name})
    try:
        for chunk in client.api.build(fileobj=buf, custom_context=True, tag=ref, pull=False, rm=True,
                                      forcerm=True, labels=labels, decode=True, timeout=1800):
            if "error" in chunk:
                raise ImageBuildError(f"build: {name}={directory} failed: {str(chunk['error']).strip()[:300]}")
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"build: {name}={directory} failed: {str(exc).splitlines()[0]}") from exc
    return ref


def to_label(versions: Mapping[str, str], toy: bool, spec: AppSpec | None = None) -> str:
    """The versions map (and the app's contract) as the load balancer's label value."""
    return json.dumps({"toy": toy, "versions": dict(versions), "app": (spec or AppSpec()).as_dict()},
                      separators=(",", ":"))


def from_label(text: str | None) -> tuple[dict[str, str], bool] | None:
    """``(versions, toy)`` from the label value; None when absent or unreadable (a fleet from before)."""
    found = _label(text)
    return None if found is None else found[:2]


def spec_from_label(text: str | None) -> AppSpec:
    """The app's contract the fleet was started with (the default when the label has none)."""
    found = _label(text)
    return found[2] if found is not None else AppSpec()


def _label(text: str | None) -> tuple[dict[str, str], bool, AppSpec] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        versions = {str(k): str(v) for k, v in data["versions"].items()}
        return versions, bool(data.get("toy", False)), AppSpec.from_dict(data.get("app") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def source_version(fleet_versions: list[str], target: str, last_from: str | None) -> str:
    """The version a roll to ``target`` moves away from: the most common other version in the fleet,
    else the last roll's origin, else ``target`` itself (nothing to move)."""
    others = [v for v in fleet_versions if v != target]
    if others:
        return max(sorted(set(others)), key=others.count)
    return last_from or target


def target_env(set_env: Mapping[str, str], v2_mode: str) -> dict[str, str]:
    """The environment the new version's servers get on top of the fleet's: ``--set-env``, and for
    ``--v2-mode breaking`` the toy app's ``APP_BREAKING=1`` (which ``--set-env`` may override)."""
    return {**({"APP_BREAKING": "1"} if v2_mode == "breaking" else {}), **set_env}


STOP_SIGNALS = ("SIGTERM", "SIGQUIT", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGKILL")
MEMORY_RE = re.compile(r"^[0-9]+[bkmg]?$")
HEALTH_PATH_RE = re.compile(r"^/[^\s]*$")


@dataclass(frozen=True)
class AppSpec:
    """Your app's contract with the fleet (the toy app's is the default with ``toy``)."""

    port: int = 8000
    health_path: str = ""  # "" = the image's HEALTHCHECK if it has one, else a TCP connect to port
    stop_signal: str = ""  # "" = the image's STOPSIGNAL (SIGTERM unless it says otherwise)
    stop_timeout: float = 20.0  # seconds after the stop signal before SIGKILL
    command: tuple[str, ...] = ()  # () = the image's CMD
    memory: str = "128m"
    read_only: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "command": list(self.command)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppSpec:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if "command" in kw:
            kw["command"] = tuple(str(c) for c in kw["command"])
        return cls(**kw)


def check_spec(spec: AppSpec) -> None:
    """UsageError naming the first bad field of ``spec``."""
    if not 1 <= spec.port <= 65535:
        raise UsageError(f"app_port: {spec.port} must be between 1 and 65535")
    if spec.health_path and not HEALTH_PATH_RE.match(spec.health_path):
        raise UsageError(f"health_path: {spec.health_path!r} must start with / and have no spaces")
    if spec.stop_signal and spec.stop_signal not in STOP_SIGNALS:
        raise UsageError(f"stop_signal: {spec.stop_signal!r} must be one of {', '.join(STOP_SIGNALS)}")
    if not 0 < spec.stop_timeout <= 3600:
        raise UsageError(f"stop_timeout: {spec.stop_timeout} must be in (0, 3600] seconds")
    if not MEMORY_RE.match(spec.memory.lower()):
        raise UsageError(f"memory: {spec.memory!r} must look like 128m, 1g or a number of bytes")
