"""The one tar helper: Docker's API moves files in and out of containers and build contexts as tar."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Mapping


def pack(files: Mapping[str, bytes], *, uid: int = 0, mtime: float = 0.0) -> bytes:
    """A tar of ``files`` (name -> content), in name order, mode 0644, owned by ``uid``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.uid = info.gid = uid
            info.mtime = int(mtime)
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def first_file(chunks: Iterable[bytes]) -> bytes:
    """The content of the first member of a tar stream (as ``get_archive`` returns it); b"" if empty."""
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member is not None else None
        return extracted.read() if extracted else b""
