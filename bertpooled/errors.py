"""The one exception type that means "the user asked for something wrong", and URIs made safe to show in one."""

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
