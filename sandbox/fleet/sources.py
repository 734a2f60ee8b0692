"""Where the build inputs of the images live: one source of truth, checkout or wheel alike.

``app_v1/``, ``app_v2/`` and ``lb/`` stay at the top of the checkout, where a reader expects
them. ``sandbox/_assets/`` holds symlinks to them: an editable install reads the checkout's
folders through the links, and a wheel (``pip install .``) carries copies as package data.
The app harness is the ``sandbox.appserver`` package itself.
"""

from __future__ import annotations

from pathlib import Path

_ASSETS = Path(__file__).resolve().parent.parent / "_assets"
_HARNESS = Path(__file__).resolve().parent.parent / "appserver"


def folder(name: str) -> Path:
    """The folder of ``app_v1``, ``app_v2`` or ``lb``, wherever the package was installed from."""
    return (_ASSETS / name).resolve()


def harness_folder() -> Path:
    """The app harness (``sandbox/appserver``) copied into every toy app image."""
    return _HARNESS
