"""JSON errors that name no server folder: every error is {"error": <kind>, "message": ...},
and messages name files relative to the index, never a server folder (`path_redactor`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from personsearch.errors import PersonSearchError
from personsearch.serve.imaging import ImageRejected
from personsearch.serve.limits import BudgetExhausted

log = logging.getLogger(__name__)

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"/:,;()]+/)+[^\s'\"/:,;()]*")
_ROUTE_PREFIXES = ("/api/", "/docs", "/static/", "/openapi")


def path_redactor(index_dir: str | os.PathLike[str]) -> Callable[[str], str]:
    """A function that rewrites a message so that it names no server folder: paths inside the
    index become relative to it (`shards/000000000000-000012.npy`), the index itself is named
    by its folder's name, and any other absolute path by its file name."""
    given = Path(index_dir)
    roots = {str(given), os.path.abspath(given), str(given.resolve())}
    roots = sorted((r for r in roots if r not in ("", ".", "/")), key=len, reverse=True)
    name = given.resolve().name

    def redact(message: str) -> str:
        for root in roots:
            message = message.replace(root + os.sep, "")
        for root in roots:
            message = message.replace(root, name)

        def file_name(match: re.Match[str]) -> str:
            text = match.group(0)
            if text.startswith(_ROUTE_PREFIXES):
                return text
            return text.rstrip("/").rsplit("/", 1)[-1]

        return _ABSOLUTE_PATH.sub(file_name, message)

    return redact


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON body every error gets: {"error": <kind>, "message": <message>}."""
    kind = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, redact: Callable[[str], str]) -> None:
    """JSON errors; `redact` keeps server folders out of every message."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = "no such page or API route; the API is described at /docs"
        if error.status_code == 405:
            message = "this method is not allowed here; the API is described at /docs"
        return error_response(error.status_code, redact(message), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> Response:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, redact("invalid request: " + "; ".join(problems)))

    @app.exception_handler(ImageRejected)
    async def rejected_image(_: Request, error: ImageRejected) -> Response:
        return error_response(error.status, redact(error.message))

    @app.exception_handler(BudgetExhausted)
    async def busy(_: Request, error: BudgetExhausted) -> Response:
        return error_response(503, str(error), {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(PersonSearchError)
    async def search_error(_: Request, error: PersonSearchError) -> Response:
        return error_response(422, redact(str(error)))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> Response:
        log.exception("unexpected error while serving a request", exc_info=error)
        return error_response(500, "internal error; the server log has the details")
