"""What a client is told when a request fails: OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}``, and the app's handlers that turn every
exception into it (never a stack trace, never the caller's own key)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tmo_graph.conversation import ThreadBusy
from tmo_graph.errors import TmoGraphError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error sent to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(exc: BaseException) -> ApiError:
    """What the client is told about ``exc``; unexpected errors are logged, not shown."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ThreadBusy):
        return ApiError(409, str(exc), code="thread_busy")
    if isinstance(exc, TmoGraphError):
        return ApiError(400, str(exc))
    log.error("turn failed", exc_info=exc)
    return ApiError(500, "internal error while answering; see the server log", "server_error")


def bad(message: str, param: str | None = None) -> ApiError:
    """A 400: input the client must fix, as ``message`` says."""
    return ApiError(400, message, param=param)


def invalid(errors: Sequence[Any]) -> ApiError:
    """A request that does not have the chat API's shape: each problem by its field."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in errors[:5]
    )
    return bad(f"invalid request: {problems}")


def _scrubbed(request: Request, error: ApiError) -> JSONResponse:
    """The error's response, with the credential the request carries never echoed back (a
    malformed header too: whatever follows its scheme is scrubbed)."""
    header = request.headers.get("authorization") or ""
    token = header.strip().partition(" ")[2].strip()
    if len(token) >= 8 and token in error.message:
        error.message = error.message.replace(token, "[API key]")
    return error.response()


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    return _scrubbed(request, api_error(exc))


async def _on_invalid(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return _scrubbed(request, invalid(errors))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        return _scrubbed(request, api_error(exc))
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _scrubbed(request, ApiError(exc.status_code, str(exc.detail), kind))


def add_error_handlers(app: FastAPI) -> None:
    """Every failure of ``app`` answered in OpenAI's shape: API errors as raised, the
    library's errors as 400 (409 for a busy thread), a malformed request as 400 naming its
    fields, routing errors (404, 405) as such, anything else a logged 500 without details."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(TmoGraphError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_api_error)
