"""Your own app: versions named by you, mapped to local images, remembered by the fleet.

The images here are the toy app's (the test needs two images that exist), declared under names of
the user's choosing; their version header is switched off, so each answer's version name can only
come from NGINX's log (upstream address -> container -> version name).
"""

from __future__ import annotations

import json

import docker
import pytest

from sandbox.fleet.images import ImageSet
from tests.e2e.conftest import Cli, assert_passes, project_objects

pytestmark = pytest.mark.e2e


def _images(image_set: ImageSet) -> list[str]:
    return ["--image", f"green={image_set.app['v1']}", "--image", f"blue={image_set.app['v2']}"]


def test_bad_versions_are_usage_errors_that_create_nothing(cli: Cli, image_set: ImageSet,
                                                           client: docker.DockerClient) -> None:
    cases = [
        (["--image", "green=no-such-image-rs:404"], "image: green=no-such-image-rs:404: no such local image"),
        (["--image", "green=Bad:Ref"], "is not a valid image reference"),
        ([*_images(image_set), "--version", "red"], "version: unknown version 'red'"),
        (["--image", "green"], "must look like NAME=IMAGE"),
    ]
    for args, message in cases:
        proc = cli.run("up", "--size", "1", "--port", str(cli.port), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert project_objects(client, cli.project) == []


def test_roll_and_rollback_between_named_versions(cli: Cli, image_set: ImageSet) -> None:
    cli.run("up", "--size", "2", "--port", str(cli.port), *_images(image_set), "--env", "APP_VERSION_HEADER=0",
            check=True)
    assert "X-App-Version" not in cli.get("/api/items/1")[1]
    status = cli.json("status", "--json")
    assert status["lb"]["versions"] == {"green": image_set.app["v1"], "blue": image_set.app["v2"]}
    assert {i["version"] for i in status["instances"]} == {"green"}  # --version defaults to the first
    plan = cli.json("roll", "--dry-run", "--json")  # the plan, and nothing touched
    assert (plan["from"], plan["to"], plan["peak_containers"], plan["min_serving"]) == ("green", "blue", 2, 1)
    assert [st["action"] for st in plan["steps"]][:3] == ["detach", "drain", "stop"]
    assert cli.json("status", "--json") == status
    # a fresh process: no --image given, the fleet remembers its map; no --to: the last declared
    report = assert_passes(cli.run("roll", "--json", "--users", "8", "--warmup", "2", "--cooldown", "2",
                                   "--min-requests", "20", timeout=300))
    assert (report["from_version"], report["to_version"], report["outcome"]) == ("green", "blue", "completed")
    by_version = report["requests"]["by_version"]
    assert by_version["green"] > 0 and by_version["blue"] > 0 and by_version.get("unknown", 0) == 0, by_version
    assert by_version.get("v1", 0) == 0 and by_version.get("v2", 0) == 0  # names, not the app's own
    assert report["attribution"]["header"] == 0 and report["attribution"]["from_log"] > 0
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"blue"}
    bad = cli.run("roll", "--to", "v2", "--no-load")
    assert bad.returncode == 2 and "unknown version 'v2'; this fleet has green, blue" in bad.stderr
    back = assert_passes(cli.run("rollback", "--json", "--no-load", timeout=300))
    assert (back["from_version"], back["to_version"]) == ("blue", "green"), json.dumps(back)[:500]
    assert {i["version"] for i in cli.json("status", "--json")["instances"]} == {"green"}
