"""Errors of the HTTP API, in the shape OpenAI's API (and so its SDK) uses."""

from __future__ import annotations

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.model_services import ServiceError


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# What a model service's answer means to an HTTP client.
_BY_GRPC_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_BY_CODE = {
    ErrorCode.SERVICE_TIMEOUT: 504,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.SERVICE_CRASHED: 503,
    ErrorCode.VOICE_UNAVAILABLE: 400,  # the gateway's own answer: no running instance can speak that voice
}


def from_service(error: ServiceError, param: str | None = None) -> ApiError:
    """The HTTP error for a failed model-service call: the service's own message for the client's mistakes."""
    status = _BY_CODE.get(error.code) or _BY_GRPC_STATUS.get(error.status or grpc.StatusCode.UNKNOWN, 502)
    message = error.detail if status < 500 else error.message
    return ApiError(status, message, error.code.value if status >= 500 else _client_code(error), param)


def _client_code(error: ServiceError) -> str:
    if error.code == ErrorCode.VOICE_UNAVAILABLE:
        return error.code.value
    if error.status == grpc.StatusCode.NOT_FOUND:
        return "not_found"
    if error.status == grpc.StatusCode.FAILED_PRECONDITION:
        return "unsupported"
    return "invalid_request"


def install(app: FastAPI) -> None:
    """API errors and request-validation errors, both in OpenAI's shape."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        message = f"{'.'.join(where) or 'request'}: {first.get('msg', 'invalid')}"
        return ApiError(400, message, "invalid_request", ".".join(where) or None).response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
