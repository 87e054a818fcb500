"""Files the project writes where a user's files live (report and config outputs, plots, caches), written one way:
to a new temporary file in the same folder, then renamed over the target.

The temporary file is made with O_EXCL under a random name, so a link planted in the folder is never written
through; the rename replaces whatever is at the target (a planted symlink included) without following it, and a
reader, a concurrent run or a kill never sees half a file. Files written into a fresh private temporary folder
(`tempfile.TemporaryDirectory`, mode 0700: what is logged to MLflow, checkpoints before they are logged) need none
of this; `tests/test_fault_doors.py` holds every other write to this module.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# What a written file's permissions are (mkstemp makes 0600): readable by others, as open() would have made it.
FILE_MODE = 0o644


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A new, empty temporary file in `path`'s folder to write to (its name ends in `suffix`, for writers that read
    the format from it: `.png`, `.npz`); renamed over `path` when the block ends, removed if it raises."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(name, FILE_MODE)
        yield Path(name)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """`text` into `path`, replacing it whole (see the module doc)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`data` into `path`, replacing it whole (see the module doc)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
