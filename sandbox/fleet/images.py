"""The three images rolling-sandbox runs: base, app (v1, v2) and lb.

Every image is tagged with a hash of its build inputs, so an image that is
present is reused as long as its inputs are unchanged, and a change in any input
(a harness file, a version's code, a Dockerfile) yields a new tag.

- base ``rolling-sandbox/base:<hash12>``: Debian bookworm with python3,
  python3-aiohttp and nginx-light. Built offline with ``debootstrap`` and
  ``docker import`` (needs root and debootstrap, and a reachable Debian mirror),
  or, where that is impossible, with ``docker build`` FROM ``debian:bookworm-slim``
  (needs a registry). ``ROLLING_SANDBOX_BASE_METHOD=debootstrap|pull`` forces one;
  ``ROLLING_SANDBOX_DEBIAN_MIRROR`` overrides the mirror read from apt's sources.
- app ``rolling-sandbox/app:<version>-<hash12>``: the harness (``sandbox/appserver``)
  in /opt/rolling-sandbox and the version's code in /srv/app, running as 10001.
- lb ``rolling-sandbox/lb:<hash12>``: NGINX from ``lb/Dockerfile``.

All Docker SDK calls here are blocking; call them from asyncio via ``to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests

from sandbox.errors import EngineError, ImageBuildError, UsageError
from sandbox.fleet import sources, tarball
from sandbox.fleet.labels import LABEL_INPUTS, LABEL_MANAGED, LABEL_ROLE, LABEL_VERSION, ROLE_IMAGE
from sandbox.fleet.versions import TOY_VERSIONS, AppSpec

logger = logging.getLogger("sandbox.fleet.images")


@dataclass(frozen=True)
class Sources:
    """The folders the images are built from (see :mod:`sandbox.assets`)."""

    harness: Path  # sandbox/appserver
    app: Mapping[str, Path]  # {"v1": app_v1/, "v2": app_v2/}
    lb: Path  # lb/


SOURCES = Sources(harness=sources.harness_folder(),
                  app={"v1": sources.folder("app_v1"), "v2": sources.folder("app_v2")},
                  lb=sources.folder("lb"))

VERSIONS = TOY_VERSIONS  # the toy app's, defined once in sandbox.fleet.versions
APP_UID = 10001
APP_DIR = "/srv/app"
HARNESS_DIR = "/opt/rolling-sandbox"

BASE_REPO = "rolling-sandbox/base"
APP_REPO = "rolling-sandbox/app"
OPTIONAL_APP_FILES = ("migrate.py",)  # a version's schema migrations (app_v2: `roll --migrate`)
LB_REPO = "rolling-sandbox/lb"
DB_REPO = "rolling-sandbox/postgres"
NODE_REPO = "rolling-sandbox/node"  # `sandbox cluster up`: a Docker engine in a container

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES: tuple[str, ...] = ("python3", "python3-aiohttp", "nginx-light", "libnginx-mod-http-lua", "lua-resty-core",
                             "redis-server",  # the shared session store (`--sessions shared`)
                             "python3-psycopg2")  # the toy app's PostgreSQL client (`--service postgres`)
BASE_RECIPE = "1"  # bump when the way the base rootfs is made or trimmed changes
NODE_PACKAGES: tuple[str, ...] = ("docker.io", "iptables", "ca-certificates")  # a cluster node: Debian's engine
DB_PACKAGES: tuple[str, ...] = ("postgresql",)  # Debian's server (`up --service postgres`), its own image
PULL_FROM = "debian:bookworm-slim"
METHOD_ENV = "ROLLING_SANDBOX_BASE_METHOD"
MIRROR_ENV = "ROLLING_SANDBOX_DEBIAN_MIRROR"
APT_SOURCES = Path("/etc/apt")

APP_DOCKERFILE = f"""\
# rolling-sandbox app image; the context holds appserver/ (the harness) and app/ (one version)
ARG BASE
FROM ${{BASE}}
COPY appserver/ {HARNESS_DIR}/appserver/
RUN python3 -m compileall -q {HARNESS_DIR}/appserver \\
    && mkdir -p {APP_DIR} && chown {APP_UID}:{APP_UID} {APP_DIR}
COPY --chown={APP_UID}:{APP_UID} app/ {APP_DIR}/
ENV PYTHONPATH={HARNESS_DIR}:{APP_DIR} \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    APP_DIR={APP_DIR} \\
    APP_PORT=8000
USER {APP_UID}:{APP_UID}
WORKDIR {APP_DIR}
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "appserver.supervisor"]
"""

PULL_BASE_DOCKERFILE = f"""\
# rolling-sandbox base image, pull-based fallback of the debootstrap build
FROM {PULL_FROM}
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
        {" ".join(PACKAGES)} \\
    && rm -rf /var/lib/apt/lists/* /usr/share/man/* /usr/share/info/*
"""

PULL_DB_DOCKERFILE = PULL_BASE_DOCKERFILE.replace(" ".join(PACKAGES), " ".join(DB_PACKAGES))
PULL_NODE_DOCKERFILE = PULL_BASE_DOCKERFILE.replace(" ".join(PACKAGES), " ".join(NODE_PACKAGES))

_TRIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/log",
)


@dataclass(frozen=True)
class ImageSet:
    """Refs of the images one checkout runs."""

    base: str
    app: dict[str, str]  # {"v1": ref, "v2": ref}, or the user's {name: ref} (see sandbox.fleet.versions)
    lb: str
    toy: bool = True  # app images are the built-in toy app's (its /healthz reports its version)
    spec: AppSpec = field(default_factory=AppSpec)  # the app's contract: port, readiness, stop signal, limits

    def refs(self) -> list[str]:
        """All refs, base first (the order they must be built in)."""
        return [self.base, *(self.app[v] for v in sorted(self.app)), self.lb]


# -- input hashes ------------------------------------------------------------


def _digest(parts: Iterable[str | bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _read(path: Path) -> bytes:
    """Bytes of a repo file; raises ImageBuildError if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageBuildError(f"cannot read build input {path}: {exc.strerror}") from exc


def _harness_files() -> dict[str, bytes]:
    """The harness package's files, by name (``*.py`` only)."""
    folder = SOURCES.harness
    names = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
    if "supervisor.py" not in names or "server.py" not in names:
        raise ImageBuildError(f"the app harness is missing from {folder}")
    return {name: _read(folder / name) for name in names}


def _version_files(version: str) -> dict[str, bytes]:
    """``app.py`` and ``VERSION`` of ``version``; raises UsageError for an unknown version."""
    if version not in VERSIONS:
        raise UsageError(f"unknown app version {version!r} (expected one of {', '.join(VERSIONS)})")
    folder = SOURCES.app[version]
    names = ["app.py", "VERSION", *(name for name in OPTIONAL_APP_FILES if (folder / name).is_file())]
    return {name: _read(folder / name) for name in names}


def _lb_dockerfile() -> bytes:
    return _read(SOURCES.lb / "Dockerfile")


def _files_parts(files: Mapping[str, bytes]) -> list[str | bytes]:
    parts: list[str | bytes] = []
    for name in sorted(files):
        parts += [name, files[name]]
    return parts


def base_inputs() -> str:
    """Hash of the base image's inputs: recipe, suite, variant, packages."""
    return _digest(["base", BASE_RECIPE, SUITE, VARIANT, *sorted(PACKAGES)])


def db_inputs() -> str:
    """Hash of the PostgreSQL image's inputs: recipe, suite, variant, packages."""
    return _digest(["postgres", BASE_RECIPE, SUITE, VARIANT, *sorted(DB_PACKAGES)])


def node_inputs() -> str:
    """Hash of the cluster node image's inputs: recipe, suite, variant, packages."""
    return _digest(["node", BASE_RECIPE, SUITE, VARIANT, *sorted(NODE_PACKAGES)])


def node_image_ref() -> str:
    """The cluster node image's ref for this checkout (``rolling-sandbox/node:<hash12>``)."""
    return f"{NODE_REPO}:{node_inputs()[:12]}"


def db_image_ref() -> str:
    """The PostgreSQL image's ref for this checkout (``rolling-sandbox/postgres:<hash12>``)."""
    return f"{DB_REPO}:{db_inputs()[:12]}"


def app_inputs(version: str, base_ref: str) -> str:
    """Hash of an app image's inputs; raises ImageBuildError (unreadable file), UsageError."""
    return _digest(
        [
            "app",
            base_ref,
            APP_DOCKERFILE,
            "harness",
            *_files_parts(_harness_files()),
            "version",
            *_files_parts(_version_files(version)),
        ]
    )


def lb_inputs(base_ref: str) -> str:
    """Hash of the lb image's inputs; raises ImageBuildError if lb/Dockerfile is unreadable."""
    return _digest(["lb", base_ref, _lb_dockerfile()])


def image_set() -> ImageSet:
    """The refs for this checkout, from its files only; raises ImageBuildError on a missing file."""
    base = f"{BASE_REPO}:{base_inputs()[:12]}"
    apps = {v: f"{APP_REPO}:{v}-{app_inputs(v, base)[:12]}" for v in VERSIONS}
    return ImageSet(base=base, app=apps, lb=f"{LB_REPO}:{lb_inputs(base)[:12]}")


# -- app code for in-place rollouts ------------------------------------------


def app_code_tar(version: str, extra_env: Mapping[str, str] | None = None) -> bytes:
    """A tar of /srv/app for ``version`` (app.py, VERSION, env.json), owned by 10001.

    ``env.json`` is always included (``{}`` without ``extra_env``) so that a later
    put_archive of another version overwrites the environment of an earlier one.
    Raises UsageError for an unknown version or non-string env, ImageBuildError if a
    file is unreadable.
    """
    files = dict(_version_files(version))
    env = dict(extra_env or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise UsageError("extra_env must map strings to strings")
    files["env.json"] = (json.dumps(env, sort_keys=True) + "\n").encode()
    return tarball.pack(files, uid=APP_UID, mtime=time.time())


# -- presence ----------------------------------------------------------------


def _exists(client: docker.DockerClient, ref: str) -> bool:
    """Whether ``ref`` is present locally; raises EngineError if the engine fails."""
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"cannot inspect image {ref}: {_one_line(exc)}") from exc
    return True


def missing_images(client: docker.DockerClient) -> list[str]:
    """Refs of the image set that are not present locally; raises EngineError, ImageBuildError."""
    return [ref for ref in image_set().refs() if not _exists(client, ref)]


# -- building ----------------------------------------------------------------


def _labels(inputs: str, **extra: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_ROLE: ROLE_IMAGE, LABEL_INPUTS: inputs, **extra}


def _one_line(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else getattr(exc, "explanation", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def ensure_images(
    client: docker.DockerClient,
    *,
    log: Callable[[str], None] = logger.info,
    force: bool = False,
) -> ImageSet:
    """Build whichever images of the set are missing (all of them with ``force``).

    ``log`` receives one progress line per image. Raises ImageBuildError (one line
    saying what failed or is missing), EngineError if the engine is unreachable,
    UsageError for a bad ``ROLLING_SANDBOX_BASE_METHOD``.
    """
    images = image_set()
    built = 0
    started = time.monotonic()
    if force or not _exists(client, images.base):
        _build_base(client, images.base, base_inputs(), log)
        built += 1
    for version in VERSIONS:
        ref = images.app[version]
        if force or not _exists(client, ref):
            _build_app(client, version, ref, images.base, log)
            built += 1
    if force or not _exists(client, images.lb):
        _build_lb(client, images.lb, images.base, log)
        built += 1
    _tag_aliases(client, images)
    if built:
        log(f"images ready: built {built}, reused {4 - built} in {time.monotonic() - started:.1f}s")
    return images


ALIASES = {"v1": f"{APP_REPO}:v1", "v2": f"{APP_REPO}:v2", "lb": f"{LB_REPO}:latest"}


def _tag_aliases(client: docker.DockerClient, images: ImageSet) -> None:
    """Point the stable tags compose/docker-compose.yml uses at the current images."""
    for key, ref in (("v1", images.app["v1"]), ("v2", images.app["v2"]), ("lb", images.lb)):
        repo, _, tag = ALIASES[key].rpartition(":")
        client.images.get(ref).tag(repo, tag)


def _build_app(
    client: docker.DockerClient, version: str, ref: str, base: str, log: Callable[[str], None]
) -> None:
    files = {f"appserver/{name}": data for name, data in _harness_files().items()}
    files.update({f"app/{name}": data for name, data in _version_files(version).items()})
    _docker_build(
        client,
        ref,
        APP_DOCKERFILE,
        files,
        labels=_labels(app_inputs(version, base), **{LABEL_VERSION: version}),
        buildargs={"BASE": base},
        log=log,
    )


def _build_lb(client: docker.DockerClient, ref: str, base: str, log: Callable[[str], None]) -> None:
    _docker_build(
        client,
        ref,
        _lb_dockerfile().decode(),
        {},
        labels=_labels(lb_inputs(base)),
        buildargs={"BASE": base},
        log=log,
    )


def _docker_build(
    client: docker.DockerClient,
    ref: str,
    dockerfile: str,
    files: Mapping[str, bytes],
    *,
    labels: Mapping[str, str],
    buildargs: Mapping[str, str] | None,
    log: Callable[[str], None],
) -> None:
    """``docker build`` of an in-memory context; raises ImageBuildError, EngineError."""
    log(f"building {ref}")
    started = time.monotonic()
    context = io.BytesIO(tarball.pack({"Dockerfile": dockerfile.encode(), **files}))
    last = ""
    try:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=ref,
            pull=False,
            rm=True,
            forcerm=True,
            labels=dict(labels),
            buildargs=dict(buildargs or {}),
            decode=True,
            timeout=1800,
        )
        for chunk in stream:
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    last = line.strip()
                    logger.debug("%s: %s", ref, last)
            if "error" in chunk:
                raise ImageBuildError(f"building {ref} failed: {_one_line(str(chunk['error']))}")
    except (docker.errors.BuildError, docker.errors.APIError) as exc:
        raise ImageBuildError(f"building {ref} failed: {_one_line(exc)}") from exc
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineError(f"building {ref}: the engine failed: {_one_line(exc)}") from exc
    if not _exists(client, ref):
        raise ImageBuildError(f"building {ref} produced no image (last output: {last or 'none'})")
    log(f"built {ref} in {time.monotonic() - started:.1f}s")


# -- the base image ----------------------------------------------------------


def _base_method() -> str:
    """``debootstrap``, ``pull`` or ``auto``; raises UsageError for another value."""
    method = os.environ.get(METHOD_ENV, "").strip().lower() or "auto"
    if method not in ("auto", "debootstrap", "pull"):
        raise UsageError(f"{METHOD_ENV}={method!r}: expected debootstrap or pull")
    return method


def _debootstrap_unavailable() -> str | None:
    """Why the debootstrap build cannot run here, or None if it can."""
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap)"
    if os.geteuid() != 0:
        return "debootstrap needs root"
    if shutil.which("tar") is None:
        return "tar is not installed"
    if debian_mirror() is None:
        return f"no apt source carries {SUITE} (set {MIRROR_ENV} to a Debian mirror)"
    return None


def ensure_db_image(client: docker.DockerClient, *, log: Callable[[str], None] = logger.info,
                    force: bool = False) -> str:
    """The PostgreSQL image's ref, built first when missing (debootstrap with Debian's ``postgresql``,
    else FROM ``debian:bookworm-slim``, as the base image is). Raises ImageBuildError, EngineError,
    UsageError (a bad ``ROLLING_SANDBOX_BASE_METHOD``)."""
    ref = db_image_ref()
    if force or not _exists(client, ref):
        _build_base(client, ref, db_inputs(), log, packages=DB_PACKAGES, pull_dockerfile=PULL_DB_DOCKERFILE)
    return ref


def ensure_node_image(client: docker.DockerClient, *, log: Callable[[str], None] = logger.info,
                      force: bool = False) -> str:
    """The cluster node image's ref (Debian's ``docker.io``), built first when missing, as the
    PostgreSQL image is. Raises ImageBuildError, EngineError, UsageError."""
    ref = node_image_ref()
    if force or not _exists(client, ref):
        _build_base(client, ref, node_inputs(), log, packages=NODE_PACKAGES, pull_dockerfile=PULL_NODE_DOCKERFILE)
    return ref


def _build_base(
    client: docker.DockerClient, ref: str, inputs: str, log: Callable[[str], None],
    *, packages: tuple[str, ...] = PACKAGES, pull_dockerfile: str = PULL_BASE_DOCKERFILE,
) -> None:
    method = _base_method()
    why_not = _debootstrap_unavailable()
    if method == "debootstrap" or (method == "auto" and why_not is None):
        if why_not is not None:
            raise ImageBuildError(f"cannot build {ref} with debootstrap: {why_not}")
        _debootstrap_base(client, ref, inputs, log, packages)
        return
    if method == "auto":
        log(f"{why_not}: building {ref} from {PULL_FROM} instead")
    try:
        _docker_build(
            client, ref, pull_dockerfile, {}, labels=_labels(inputs), buildargs=None, log=log
        )
    except ImageBuildError as exc:
        if method == "pull":
            raise
        raise ImageBuildError(
            f"cannot build the base image: {why_not}, and pulling {PULL_FROM} failed ({exc})"
        ) from exc


def debian_mirror(apt_dir: Path | None = None) -> str | None:
    """The Debian mirror to debootstrap from: $ROLLING_SANDBOX_DEBIAN_MIRROR, else the first
    apt source (one-line or deb822) that carries the ``bookworm`` suite, else None (no mirror
    name is built in: the machine's own apt sources say where Debian's packages come from)."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    if override:
        return override
    apt_dir = apt_dir or APT_SOURCES
    candidates: list[Path] = [apt_dir / "sources.list"]
    folder = apt_dir / "sources.list.d"
    if folder.is_dir():
        candidates += sorted(p for p in folder.iterdir() if p.suffix in (".list", ".sources"))
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        uri = _deb822_mirror(text) if path.suffix == ".sources" else _one_line_mirror(text)
        if uri:
            return uri
    return None


def _one_line_mirror(text: str) -> str | None:
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1].rstrip("/")
    return None


def _deb822_mirror(text: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if (
            fields.get("enabled", "yes").lower() != "no"
            and "deb" in fields.get("types", "").split()
            and SUITE in fields.get("suites", "").split()
            and fields.get("uris")
        ):
            return fields["uris"].split()[0].rstrip("/")
    return None


def _run(cmd: list[str], what: str, timeout: float) -> None:
    """Run ``cmd``; raises ImageBuildError with the last output line if it fails."""
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageBuildError(f"{what} failed: {_one_line(exc)}") from exc
    for line in proc.stdout.splitlines():
        logger.debug("%s: %s", what, line)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {_one_line(proc.stdout)}")


def _debootstrap_base(
    client: docker.DockerClient, ref: str, inputs: str, log: Callable[[str], None],
    packages: tuple[str, ...] = PACKAGES,
) -> None:
    """debootstrap a rootfs, trim it, ``docker import`` it as ``ref``; raises ImageBuildError."""
    mirror = debian_mirror()
    if mirror is None:
        raise ImageBuildError(f"cannot debootstrap {ref}: no apt source carries {SUITE} (set {MIRROR_ENV})")
    log(f"building {ref} offline: debootstrap {SUITE} from {mirror} (about a minute)")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="rolling-sandbox-base-"))
    try:
        root = work / "rootfs"
        _run(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(packages)}",
                SUITE,
                str(root),
                mirror,
            ],
            "debootstrap",
            timeout=1800,
        )
        _trim_rootfs(root)
        tarball = work / "rootfs.tar"
        _run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
            "tar of the rootfs",
            timeout=600,
        )
        repository, tag = ref.rsplit(":", 1)
        changes = [f"LABEL {key}={value}" for key, value in _labels(inputs).items()] + [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["/bin/bash"]',
        ]
        try:
            result = client.api.import_image(
                src=str(tarball), repository=repository, tag=tag, changes=changes
            )
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"docker import of {ref} failed: {_one_line(exc)}") from exc
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise EngineError(f"docker import of {ref}: engine failed: {_one_line(exc)}") from exc
        if '"error' in str(result):
            raise ImageBuildError(f"docker import of {ref} failed: {_one_line(str(result))}")
    finally:
        _remove_tree(work)
    if not _exists(client, ref):
        raise ImageBuildError(f"docker import of {ref} produced no image")
    log(f"built {ref} in {time.monotonic() - started:.1f}s")


def _trim_rootfs(root: Path) -> None:
    """Drop apt lists and caches, logs, man pages, locales and docs (keeping copyright files).

    Only files go; directories stay, since apt and nginx expect some of them to exist.
    """
    for rel in _TRIM:
        for path in _files_below(root / rel):
            path.unlink()
    for path in _files_below(root / "usr/share/doc"):
        if path.name != "copyright":
            path.unlink()
    for name in ("var/cache/debconf/config.dat-old", "var/cache/debconf/templates.dat-old"):
        (root / name).unlink(missing_ok=True)
    for name in ("etc/hostname", "etc/resolv.conf"):  # the host's; Docker provides its own
        path = root / name
        if path.is_file() and not path.is_symlink():
            path.write_text("")


def _files_below(folder: Path) -> list[Path]:
    """Every non-directory entry below ``folder`` (symlinks included, never followed)."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        found += [Path(dirpath, name) for name in filenames]
        found += [Path(dirpath, name) for name in dirnames if Path(dirpath, name).is_symlink()]
    return found


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True)


def _remove_tree(work: Path) -> None:
    """Delete the debootstrap work dir, first unmounting anything debootstrap left mounted."""
    for point in _mounts_under(work):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    left = _mounts_under(work)
    if left:
        logger.warning("not removing %s: %s is still mounted", work, left[0])
        return

    shutil.rmtree(work, ignore_errors=True)
    if work.exists():
        logger.warning("could not remove all of %s", work)


def prune_images(client: docker.DockerClient) -> list[str]:
    """Remove this project's images that the current inputs no longer produce.

    Only images labelled as rolling-sandbox images AND tagged only in its own
    repositories are considered: an image someone built FROM ours inherits our labels
    but not our names, and is never touched. The current set (with its stable alias
    tags) and images a container still uses are kept. Returns the tags removed.
    """
    ours = (BASE_REPO + ":", APP_REPO + ":", LB_REPO + ":", DB_REPO + ":", NODE_REPO + ":")
    current = image_set()
    keep_ids = set()
    for ref in [*current.refs(), db_image_ref(), node_image_ref()]:
        with contextlib.suppress(docker.errors.ImageNotFound):
            keep_ids.add(client.images.get(ref).id)
    in_use = {c.attrs.get("Image") for c in client.containers.list(all=True)}
    removed: list[str] = []
    managed = client.images.list(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ROLE}={ROLE_IMAGE}"]})
    for image in managed:
        if image.id in keep_ids or image.id in in_use:
            continue
        if not image.tags or not all(tag.startswith(ours) for tag in image.tags):
            continue
        for tag in image.tags:
            try:
                client.images.remove(tag, noprune=False)
                removed.append(tag)
            except docker.errors.APIError as exc:  # still needed by another image, say
                logger.info("kept %s: %s", tag, _one_line(exc))
    return removed
