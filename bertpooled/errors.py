"""The one exception type that means "the user asked for something wrong"."""


class BertpooledError(Exception):
    """A user mistake or an unusable input: the CLI prints the message as one line and exits 2.

    The message names the problem and the fix, e.g.
    ``"epochs must be a positive integer, got 0: pass --epochs 1 or more"``.
    """
