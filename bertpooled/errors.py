"""The one exception type that means "the user asked for something wrong", and URIs made safe to show in one."""

import errno
from urllib.parse import urlsplit, urlunsplit


class BertpooledError(Exception):
    """A user mistake or an unusable input: the CLI prints the message as one line and exits 2.

    The message names the problem and the fix, e.g.
    ``"epochs must be a positive integer, got 0: pass --epochs 1 or more"``.
    """


def redact_uri(uri: str) -> str:
    """A URI with any `user:password@` removed, safe to print or log."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def short_text(value: object, limit: int = 80) -> str:
    """`value` as text, its middle cut to keep `limit` characters and its full length said: a 5,000-character
    path stays one line, and still shows where it starts and which file it ends in."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-(limit - limit // 2) :]} ({len(text):,} characters)"


# What to do about an OS error on a path the user gave, by errno; anything else: check the path.
_OS_FIXES: dict[int | None, str] = {  # looked up with OSError.errno, which may be None
    errno.ENAMETOOLONG: "use a shorter path (the system allows at most 255 characters per name, 4,096 in all)",
    errno.ELOOP: "a symbolic link there points back at itself: remove the loop or pass another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a file stands where a folder is expected: check the path",
    errno.EISDIR: "that is a folder: pass a file",
    errno.EEXIST: "something already exists there: pass a new folder's path, or remove it",
    errno.EACCES: "make it accessible to this user, or pass another path",
    errno.EPERM: "make it accessible to this user, or pass another path",
    errno.EROFS: "that file system is read-only: pass a writable location",
    errno.ENOSPC: "the disk is full: free space or pass another location",
    errno.EDQUOT: "the disk quota is used up: free space or pass another location",
    errno.ENXIO: "that is a device, not a file: pass a regular file or folder",
    errno.ENODEV: "that is a device, not a file: pass a regular file or folder",
}


def os_error_line(exc: OSError) -> str:
    """One line for an OS error on a path: the path (cut short), the system's reason and what to do."""
    path = short_text(exc.filename)
    if exc.filename2 is not None:
        path += f" -> {short_text(exc.filename2)}"
    reason = exc.strerror or type(exc).__name__
    return f"{path}: {reason}: {_OS_FIXES.get(exc.errno, 'check the path, or pass another')}"
