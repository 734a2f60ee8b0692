"""Report files written whole or not at all.

:func:`write_atomic` writes into a temporary file beside the target and renames it over the target
(``os.replace``), so a reader, or a run that failed half-way (a full disk), never sees a
half-written file: the target is either the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the file over ``path``. Raises what ``write`` or
    the file system raise (OSError on a full disk); the temporary file is removed then."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
