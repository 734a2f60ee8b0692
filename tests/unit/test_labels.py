"""Label filters select exactly one project's objects."""

from __future__ import annotations

from sandbox.fleet import labels as L


def test_project_labels_carry_project_and_role() -> None:
    got = L.project_labels("demo", L.ROLE_APP, **{L.LABEL_SLOT: "3"})
    assert got == {L.LABEL_MANAGED: "true", L.LABEL_PROJECT: "demo", L.LABEL_ROLE: "app", L.LABEL_SLOT: "3"}


def test_filter_requires_managed_and_project() -> None:
    assert L.project_filter("demo") == {"label": [f"{L.LABEL_MANAGED}=true", f"{L.LABEL_PROJECT}=demo"]}
    assert L.project_filter("demo", L.ROLE_LB)["label"][-1] == f"{L.LABEL_ROLE}=lb"


def matches(labels: dict[str, str], flt: dict[str, list[str]]) -> bool:
    """Docker's semantics for a list of label filters: every one must hold."""
    return all(labels.get(k) == v for k, _, v in (f.partition("=") for f in flt["label"]))


def test_filter_semantics() -> None:
    mine = L.project_labels("demo", L.ROLE_APP)
    other_project = L.project_labels("demo2", L.ROLE_APP)
    unmanaged = {L.LABEL_PROJECT: "demo"}  # someone else's container that happens to use the key
    assert matches(mine, L.project_filter("demo"))
    assert not matches(other_project, L.project_filter("demo"))
    assert not matches(unmanaged, L.project_filter("demo"))
    assert not matches(mine, L.project_filter("demo", L.ROLE_LB))
