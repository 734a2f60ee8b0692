"""The one exception tree of rolling-sandbox.

SandboxError
 +-- UsageError          bad input from the user (flag, config value); exit code 2
 |    +-- PortInUseError the requested load balancer port is already bound
 +-- EngineError         the Docker engine is missing, unreachable or refused a call
 |    +-- GoneError      a container or network vanished while the sandbox was using it
 +-- ImageBuildError     an image could not be built
 +-- BalancerError       NGINX rejected a config or could not be reloaded
 +-- RolloutError        a rollout could not go on (readiness, error ratio, drain)
 |    +-- ReadinessError a new server did not become ready before its deadline
 +-- NotFoundError       the project has no fleet (nothing to act on)

Expected errors are printed by the CLI as one line; anything else is a bug and
gets a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class SandboxError(Exception):
    """Base class of every error rolling-sandbox expects and reports in one line."""

    exit_code = EXIT_FAILURE


class UsageError(SandboxError, ValueError):
    """A flag, config value or argument is invalid; nothing was touched."""

    exit_code = EXIT_USAGE


class PortInUseError(UsageError):
    """The requested load balancer port is already in use on 127.0.0.1."""


class EngineError(SandboxError):
    """The Docker engine is unreachable or refused a call."""


class GoneError(EngineError):
    """A container or network vanished while the sandbox was using it (removed by hand, or crashed)."""


class ImageBuildError(SandboxError):
    """An image could not be built."""


class BalancerError(SandboxError):
    """NGINX rejected a rendered config or failed to reload."""


class RolloutError(SandboxError):
    """A rollout could not go on."""


class ReadinessError(RolloutError):
    """A new server did not pass its readiness check before its deadline."""


class NotFoundError(SandboxError):
    """The project has no fleet to act on."""
