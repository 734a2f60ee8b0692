"""The built images against a real Docker engine, with the runtime's container hardening.

Builds the images if missing (about a minute for the offline base), runs app and lb
containers of a unique test project, and removes every container, volume and network
it created (the images stay: they are shared and cached).

HTTP goes to ports published on 127.0.0.1 only, never to container addresses.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.types import Mount

from sandbox.fleet.images import ImageSet, app_code_tar, prune_images
from sandbox.fleet.labels import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_VERSION,
    ROLE_APP,
    ROLE_IMAGE,
    ROLE_LB,
    ROLE_NETWORK,
    ROLE_VOLUME,
    project_filter,
    project_labels,
)

pytestmark = pytest.mark.e2e


@dataclass
class Project:
    client: docker.DockerClient
    name: str
    images: ImageSet

    def run_app(self, version: str, slot: str, **environment: str) -> Container:
        """An app container with exactly the hardening the runtime uses."""
        labels = project_labels(self.name, ROLE_APP, **{LABEL_VERSION: version})
        return self.client.containers.run(
            self.images.app[version],
            name=f"{self.name}-app-{slot}",
            detach=True,
            read_only=True,
            tmpfs={"/tmp": ""},
            mounts=[
                Mount(
                    target="/srv/app",
                    source=None,
                    type="volume",
                    labels=project_labels(self.name, ROLE_VOLUME),
                )
            ],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit="128m",
            pids_limit=128,
            user="10001:10001",
            network=self.name,
            labels=labels,
            environment={"APP_STOP_DELAY": "0.2", **environment},
            ports={"8000/tcp": ("127.0.0.1", None)},
        )


@pytest.fixture
def project(client: docker.DockerClient, image_set: ImageSet) -> Iterator[Project]:
    name = f"test-images-{secrets.token_hex(4)}"
    network = client.networks.create(name, labels=project_labels(name, ROLE_NETWORK))
    try:
        yield Project(client, name, image_set)
    finally:
        for container in client.containers.list(all=True, filters=project_filter(name)):
            container.remove(force=True, v=True)
        network.remove()
        for volume in client.volumes.list(filters=project_filter(name)):
            volume.remove(force=True)


def host_url(container: Container, port: str, path: str) -> str:
    container.reload()
    host_port = container.attrs["NetworkSettings"]["Ports"][port][0]["HostPort"]
    return f"http://127.0.0.1:{host_port}{path}"


def get(url: str) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or text) of a GET; raises OSError if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers), err.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


def wait_health(url: str, version: str, timeout: float = 30) -> dict[str, str]:
    """Poll /healthz until it says ready for ``version``; returns the response headers."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, headers, body = get(url)
            last = (status, body)
            if status == 200 and body == {"status": "ready", "version": version}:
                return headers
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready for {version} after {timeout}s: {last}")


def test_app_container_hardened_reload_and_stop(project: Project) -> None:
    app = project.run_app("v1", "1")
    health = host_url(app, "8000/tcp", "/healthz")
    first = wait_health(health, "v1")
    assert app.exec_run(["id", "-u"]).output.strip() == b"10001"

    status, headers, body = get(host_url(app, "8000/tcp", "/api/items/4"))
    assert (status, headers["X-App-Version"]) == (200, "v1")
    assert body == {"id": 4, "name": "item-4", "price": 104}

    # in-place rollout: new code (and env) into the volume, then a graceful reload
    assert app.put_archive("/srv/app", app_code_tar("v2", {"APP_BREAKING": "1"}))
    app.kill(signal="SIGHUP")
    second = wait_health(health, "v2")
    assert second["X-Instance"] != first["X-Instance"]
    assert second["X-Instance"].split("/")[0] == first["X-Instance"].split("/")[0]
    status, headers, body = get(host_url(app, "8000/tcp", "/api/items/4"))
    assert (status, headers["X-App-Version"]) == (200, "v2")
    assert body == {"id": 4, "title": "item-4", "price": 104, "currency": "EUR"}

    app.kill(signal="SIGTERM")
    assert app.wait(timeout=30)["StatusCode"] == 0


def test_app_boot_failure_exits_non_zero(project: Project) -> None:
    app = project.run_app("v2", "2", APP_BOOT_FAIL="1")
    assert app.wait(timeout=30)["StatusCode"] == 3
    assert b"APP_BOOT_FAIL" in app.logs()


def test_lb_placeholder_answers_503(project: Project) -> None:
    lb = project.client.containers.run(
        project.images.lb,
        name=f"{project.name}-lb",
        detach=True,
        network=project.name,
        labels=project_labels(project.name, ROLE_LB),
        ports={"80/tcp": ("127.0.0.1", None)},
    )
    url = host_url(lb, "80/tcp", "/")
    deadline = time.monotonic() + 15
    status = 0
    while time.monotonic() < deadline and status != 503:
        try:
            status = get(url)[0]
        except OSError:
            time.sleep(0.2)
    assert status == 503
    assert lb.exec_run(["nginx", "-t"]).exit_code == 0
    assert lb.exec_run(["test", "-d", "/etc/nginx/staging"]).exit_code == 0
    lb.kill(signal="SIGQUIT")
    assert lb.wait(timeout=30)["StatusCode"] == 0



def test_prune_removes_only_older_sandbox_images(client: docker.DockerClient, image_set: ImageSet) -> None:
    """An outdated rolling-sandbox image goes; the current set and a foreign image stay."""
    tag = f"test-prune-{secrets.token_hex(3)}"
    ours = f"FROM {image_set.base}\nLABEL {LABEL_MANAGED}=true {LABEL_ROLE}={ROLE_IMAGE} x={tag}\n"
    theirs = f"FROM {image_set.base}\nLABEL x={tag}\n"
    old_ref, foreign_ref = f"rolling-sandbox/app:{tag}-old", f"{tag}-foreign:latest"
    client.images.build(fileobj=io.BytesIO(ours.encode()), tag=old_ref, rm=True, pull=False)
    client.images.build(fileobj=io.BytesIO(theirs.encode()), tag=foreign_ref, rm=True, pull=False)
    try:
        removed = prune_images(client)
        assert old_ref in removed
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(old_ref)
        for ref in image_set.refs():
            client.images.get(ref)  # the current set stays
        client.images.get(foreign_ref)  # not ours: untouched
    finally:
        for ref in (foreign_ref, old_ref):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(ref, force=True)
