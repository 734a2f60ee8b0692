"""Every error of the tree maps to its exit code in one place."""

from __future__ import annotations

import pytest

from sandbox import errors as E


@pytest.mark.parametrize(("exc", "code"), [
    (E.UsageError("x"), 2), (E.PortInUseError("x"), 2),
    (E.Interrupted("x"), 130), (KeyboardInterrupt(), 130),
    (E.EngineError("x"), 1), (E.GoneError("x"), 1), (E.ImageBuildError("x"), 1), (E.BalancerError("x"), 1),
    (E.RolloutError("x"), 1), (E.ReadinessError("x"), 1), (E.ErrorRatioExceeded("x"), 1),
    (E.PlanError("x"), 1), (E.TrafficError("x"), 1), (E.NotFoundError("x"), 1), (RuntimeError("bug"), 1),
])
def test_exit_code_for(exc: BaseException, code: int) -> None:
    assert E.exit_code_for(exc) == code


def test_every_error_of_the_tree_is_a_sandbox_error_and_documented() -> None:
    tree = [v for v in vars(E).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert {t.__name__ for t in tree} >= {"UsageError", "Interrupted", "PlanError", "TrafficError", "GoneError"}
    for t in tree:
        assert issubclass(t, E.SandboxError) and t.__doc__, t
        assert t.__name__ in (E.__doc__ or ""), f"{t.__name__} is missing from the tree in the module docstring"


def test_a_hint_names_the_project_unless_it_is_the_default() -> None:
    assert E.hint("down", E.DEFAULT_PROJECT) == "`sandbox down`"
    assert E.hint("roll --to v2", "shop") == "`sandbox roll --to v2 --project shop`"


@pytest.mark.asyncio
async def test_already_up_says_which_project_to_act_on() -> None:
    from sandbox import commands
    from sandbox.config import Settings
    from tests.unit.fakes import FakeRuntime

    runtime = FakeRuntime()
    runtime.lbs["shop"] = object()  # type: ignore[assignment]
    with pytest.raises(E.UsageError, match=r"`sandbox status --project shop` shows it, "
                                           r"`sandbox down --project shop` removes it"):
        await commands.up(Settings(project="shop"), runtime=runtime)  # type: ignore[arg-type]
