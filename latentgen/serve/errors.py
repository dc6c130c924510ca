"""Errors the server answers with, shaped as AUTOMATIC1111's API shapes them: an HTTP status and a JSON
body ``{"error": <kind>, "detail": <what and how to fix it>, "body": "", "errors": <the same as text>}``.
No response ever carries a stack trace; the server's log does."""

from __future__ import annotations

from contextlib import contextmanager


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx, or 5xx for the server's own trouble) and ``detail``."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class QueueFull(ApiError):
    def __init__(self, size: int):
        super().__init__(429, f"the queue is full ({size} jobs waiting): try again in a moment, or start the "
                              f"server with a larger --queue-size.", headers={"Retry-After": "1"})


class Interrupted(Exception):
    """Raised from the sampler callback after ``POST /sdapi/v1/interrupt``: the job returns what it has."""


class Cancelled(Exception):
    """Raised from the sampler callback when the client that asked for the job has gone away."""


class JobTimeout(ApiError):
    def __init__(self, limit: float, where: str):
        super().__init__(504, f"the job ran longer than the server's --job-timeout of {limit:g} s and was stopped "
                              f"({where}); ask for fewer steps, fewer or smaller images.")


@contextmanager
def unprocessable():
    """latentgen's argument checks (``latentgen.checks``: a ValueError that names the field and the fix)
    inside the block, or the function it decorates, answer as A1111's 422 ``HTTPException``."""
    try:
        yield
    except ValueError as e:
        raise ApiError(422, str(e)) from None


def body(error: str, detail, errors: str | None = None) -> dict:
    """A1111's error body (``modules/api/api.py``: ``handle_exception``)."""
    return {"error": error, "detail": detail, "body": "", "errors": errors if errors is not None else str(detail)}
