"""Errors every command turns into one line on stderr and exit status 2."""


class UsageError(Exception):
    """Exit 2 with this one line."""
