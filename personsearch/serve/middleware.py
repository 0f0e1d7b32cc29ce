"""What a request must pass before a route sees it: the request guard (body size, Host header,
security headers) and, with a token, the access check.

- The whole request body is counted, Content-Length or not (`RequestGuard`).
- Host headers are checked against `allowed_hosts` (loopback names by default), so a web page
  elsewhere cannot reach a loopback server by DNS rebinding.
- With a token, every /api route but /api/health needs `Authorization: Bearer <token>`
  (`token_check`).
"""

# No `from __future__ import annotations`: FastAPI reads the token check's annotations at run
# time, and its dependency is a closure.

import secrets
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from personsearch.serve.errors import error_response

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# The page loads nothing from elsewhere; /docs (Swagger UI from a CDN) is left without a CSP.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


# ---- the access token ------------------------------------------------------------------------


def token_check(token: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that answers 401 unless the request carries `Authorization: Bearer <token>`
    (compared in constant time); with no token it lets every request through."""
    bearer = HTTPBearer(auto_error=False, description="the token given to `personsearch serve`")

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401,
                "this server needs an access token: send 'Authorization: Bearer <token>', or "
                "open the page with the link `personsearch serve` printed",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


# ---- request guard: body size, host header, security headers ---------------------------------


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit:,} bytes")


class RequestGuard:
    """ASGI middleware: caps request bodies, checks the Host header, adds security headers.

    The body is counted as it arrives, so a client that sends no (or a false) Content-Length
    is cut off at the limit too.
    """

    def __init__(self, app: Any, max_body_bytes: int, allowed_hosts: Sequence[str] | None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = _host_name(headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await _send_error(send, 400, f"host {host!r} is not served here; use 127.0.0.1")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send, 413, str(BodyTooLarge(self.max_body_bytes).detail))
            return
        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        docs = scope["path"].startswith("/docs") or scope["path"].startswith("/redoc")

        async def secured_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if not docs:
                    extra.append((b"content-security-policy", PAGE_CSP.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, counted_receive, secured_send)


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _send_error(send: Any, status: int, message: str) -> None:
    response = error_response(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
