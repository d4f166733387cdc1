"""The exception tree of hotloop.

Every error hotloop raises on purpose derives from :class:`HotloopError`::

    HotloopError
    ├── ProtocolError            the peer sent something we cannot use (remote error)
    │   ├── DecodeError          not JSON, not an object, not valid SSE, ...
    │   └── InvalidMessage       valid JSON but the wrong shape (missing or mistyped field)
    ├── APIError                 an error to report to a client with an OpenAI-shaped body
    │                            (``status``, ``code``, ``type``, ``param``); the gateway turns
    │                            it into an HTTP error body, an SSE ``error`` event or a WS
    │                            ``error`` envelope
    └── ScenarioError            a scenario file is malformed

Facts live in attributes (``.code``, ``.param``, ``.status``); messages are for humans. An
error that ended an agent run carries the run's state in ``.partial``, to continue it from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hotloop.runtime.events import PartialRun

__all__ = [
    "APIError",
    "DecodeError",
    "HotloopError",
    "InvalidMessage",
    "ProtocolError",
    "ScenarioError",
]


class HotloopError(Exception):
    """Root of every exception hotloop raises on purpose.

    ``partial`` is set when the error ended an agent run (``Runner.run``): the run's state
    when it failed, to pass as ``previous=`` to continue it without re-running finished
    tool calls. ``None`` otherwise.
    """

    partial: PartialRun | None = None


class ProtocolError(HotloopError):
    """The peer sent bytes or a message we cannot use."""


class DecodeError(ProtocolError):
    """Input is not decodable: invalid JSON, invalid UTF-8, not a JSON object, bad SSE."""


class InvalidMessage(ProtocolError):
    """Input decodes but has the wrong shape: a missing or mistyped field.

    ``param`` names the offending field (dotted path) when it is known.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class APIError(HotloopError):
    """An error reported to an API client, shaped like OpenAI's error body.

    ``status`` is the HTTP status (or the ``status`` of a WebSocket ``error`` event),
    ``type`` the OpenAI error type (``invalid_request_error``, ``server_error``, ...),
    ``code`` the machine-readable code and ``param`` the offending request field.
    ``retry_after`` (seconds) is when trying again makes sense, for a rate limit; an HTTP
    reply carries it as the ``retry-after`` header.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        """The ``error`` object of OpenAI's error schema."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def headers(self) -> dict[str, str]:
        """The HTTP headers the error carries: ``retry-after`` when it has one (an HTTP reply
        sends them as headers, a WebSocket ``error`` envelope as its ``error.headers``)."""
        return {} if self.retry_after is None else {"retry-after": f"{self.retry_after:g}"}

    def __repr__(self) -> str:
        return f"APIError({self.message!r}, status={self.status}, code={self.code!r})"


class ScenarioError(HotloopError):
    """A scenario file or object is malformed."""
