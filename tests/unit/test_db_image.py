"""The PostgreSQL image (`up --service postgres`): its own inputs and ref, Debian's package, built by
debootstrap like the base, or FROM debian:bookworm-slim where debootstrap cannot run."""

from __future__ import annotations

import pytest

from sandbox.errors import ImageBuildError
from sandbox.fleet import images
from tests.unit.test_images import FakeClient


def test_its_ref_is_keyed_by_its_own_inputs() -> None:
    assert images.db_image_ref() == f"rolling-sandbox/postgres:{images.db_inputs()[:12]}"
    assert images.db_inputs() != images.base_inputs()
    assert images.DB_PACKAGES == ("postgresql",)
    assert "python3-psycopg2" in images.PACKAGES  # the toy app's client, in the base every app image has


def test_its_pull_dockerfile_installs_debians_postgresql() -> None:
    text = images.PULL_DB_DOCKERFILE
    assert f"FROM {images.PULL_FROM}" in text and "install -y --no-install-recommends" in text
    assert "postgresql" in text and "nginx-light" not in text


def test_it_is_built_only_when_missing_with_the_base_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    present = FakeClient({images.db_image_ref()})
    assert images.ensure_db_image(present, log=lambda _: None) == images.db_image_ref()  # type: ignore[arg-type]
    assert present.api.builds == []

    monkeypatch.delenv(images.METHOD_ENV, raising=False)
    monkeypatch.setattr(images, "_debootstrap_unavailable", lambda: "debootstrap needs root")
    client = FakeClient(set())
    said: list[str] = []
    with pytest.raises(ImageBuildError) as info:  # the fake engine builds nothing
        images.ensure_db_image(client, log=said.append)  # type: ignore[arg-type]
    assert "debootstrap needs root" in str(info.value) and "\n" not in str(info.value)
    (build,) = client.api.builds
    assert build["tag"] == images.db_image_ref() and build["pull"] is False
    assert build["labels"][images.LABEL_INPUTS] == images.db_inputs()
    assert said[0] == f"debootstrap needs root: building {images.db_image_ref()} from debian:bookworm-slim instead"
