"""The `bertpooled` command (`app`): one module per command group, what they share, and the MLproject entry points."""

from bertpooled.cli.commands import app, main

__all__ = ["app", "main"]
