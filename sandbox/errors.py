"""The one exception tree of rolling-sandbox, and the one map from an error to an exit code.

SandboxError
 +-- UsageError            bad input from the user (flag, config value); exit code 2
 |    +-- PortInUseError   the requested load balancer port is already bound
 +-- EngineError           the Docker engine is missing, unreachable or refused a call
 |    +-- GoneError        a container or network vanished while the sandbox was using it
 |    +-- EngineUnreachable  the engine stopped answering mid-call (restarted, stopped, its socket gone)
 +-- ImageBuildError       an image could not be built
 +-- BalancerError         NGINX rejected a config or could not be reloaded
 |    +-- BalancerConflict  the load balancer's state changed under this controller (another writer)
 +-- RolloutError          a rollout could not go on (readiness, error ratio, drain)
 |    +-- ReadinessError   a new server did not become ready before its deadline
 |    +-- ErrorRatioExceeded  too many requests failed during the rollout
 |    +-- ProgressDeadlineExceeded  no step completed within --progress-deadline
 |    +-- Aborted          `sandbox abort` (or a pause past --pause-timeout): roll back
 |    |    +-- AnalysisFailed  a canary step's analysis failed: roll back, as an abort does
 |    +-- MigrationError   the --migrate command failed before the first batch (nothing changed)
 |    +-- HookError        a --hook failed: pre-rollout (nothing changed) or post-batch (roll back)
 |    +-- DatabaseDown     the fleet's PostgreSQL server is not running at `roll` (nothing changed)
 +-- PlanError (ValueError)  settings, a fleet or a plan break a rule of the planner
 +-- TrafficError          the load generator could not be started, or died
 +-- NotFoundError         the project has no fleet (nothing to act on)
 +-- Interrupted           the user stopped the rollout (Ctrl-C); exit code 130
 +-- FleetCommandError     (sandbox.pytest_plugin) a command the sandbox_fleet fixture ran exited badly

Expected errors are printed by the CLI as one line; anything else is a bug and
gets a traceback. :func:`exit_code_for` is the only place an error becomes an exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT
DEFAULT_PROJECT = "sandbox"


class SandboxError(Exception):
    """Base class of every error rolling-sandbox expects and reports in one line."""


class UsageError(SandboxError, ValueError):
    """A flag, config value or argument is invalid; nothing was touched."""


class PortInUseError(UsageError):
    """The requested load balancer port is already in use on 127.0.0.1."""


class EngineError(SandboxError):
    """The Docker engine is unreachable or refused a call."""


class GoneError(EngineError):
    """A container or network vanished while the sandbox was using it (removed by hand, or crashed)."""


class EngineUnreachable(EngineError):
    """The Docker engine stopped answering while the sandbox was using it: it was stopped or is
    restarting (its socket gone, the connection cut). What it ran is as the engine left it."""


class ImageBuildError(SandboxError):
    """An image could not be built."""


class BalancerError(SandboxError):
    """NGINX rejected a rendered config or failed to reload."""


class BalancerConflict(BalancerError):
    """The load balancer holds a generation this controller did not expect: another writer
    changed it, and nothing was overwritten."""


class RolloutError(SandboxError):
    """A rollout could not go on."""


class ReadinessError(RolloutError):
    """A new server did not pass its readiness check before its deadline."""


class ErrorRatioExceeded(RolloutError):
    """The share of failed requests during the rollout went above the configured limit."""


class ProgressDeadlineExceeded(RolloutError):
    """No step of the rollout completed within --progress-deadline (time paused not counted)."""


class Aborted(RolloutError):
    """Someone asked the running rollout to stop and go back (``sandbox abort``, or a pause that timed out)."""


class AnalysisFailed(Aborted):
    """A canary step's analysis failed (or stayed inconclusive past its extensions): the rollout
    aborts and rolls back, as ``sandbox abort`` does."""

class MigrationError(RolloutError):
    """The ``--migrate`` command failed before the first batch; nothing of the fleet was changed."""


class HookError(RolloutError):
    """A ``--hook`` failed: a pre-rollout one stops the roll before anything changes, a post-batch
    one rolls back as a failed batch does."""


class DatabaseDown(RolloutError):
    """The fleet was started with ``--service postgres`` and its server is gone, stopped or not
    answering when a rollout begins; nothing of the fleet was changed."""


class PlanError(SandboxError, ValueError):
    """Settings, a fleet or a plan break a rule; ``field`` names the culprit when it is one field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TrafficError(SandboxError):
    """The load generator could not be started, or died."""


class NotFoundError(SandboxError):
    """The project has no fleet to act on."""


class Interrupted(SandboxError):
    """The user asked the rollout to stop (Ctrl-C); the fleet was left consistent."""


def hint(command: str, project: str) -> str:
    """```sandbox COMMAND```, with ``--project PROJECT`` unless it is the default: a command a
    message suggests, which acts on the same project when typed as shown."""
    where = "" if project == DEFAULT_PROJECT else f" --project {project}"
    return f"`sandbox {command}{where}`"


def exit_code_for(exc: BaseException) -> int:
    """The process's exit code for ``exc``: 2 bad input, 130 interrupted, 1 anything else."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, Interrupted | KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE
