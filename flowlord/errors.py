"""Errors of user input: a command turns UsageError into one line on stderr and exit
status 2; the HTTP API turns BadRequest into a 4xx answer."""

from http import HTTPStatus


class UsageError(Exception):
    """Exit 2 with this one line."""


class BadRequest(Exception):
    """An HTTP request answered with a 4xx: (status, message)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
