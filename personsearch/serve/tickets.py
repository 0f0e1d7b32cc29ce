"""Short-lived tickets that let a `<video>` element fetch one indexed video.

A browser's video element fetches its source itself, with range requests, and cannot send the
`Authorization` header a token-guarded server needs. The page therefore asks (with its token)
for a ticket: a URL naming one video, an expiry time and an HMAC of both under a secret made
when the server starts. The URL carries no token, opens that one video only, and only until it
expires; a restarted server's tickets are void.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

#: How long a ticket plays its video (seconds).
TICKET_TTL_S = 3600


@dataclass(frozen=True)
class VideoTickets:
    ttl_s: int = TICKET_TTL_S
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def issue(self, image_id: int, now: float | None = None) -> tuple[str, int]:
        """(URL path with the ticket, expiry as Unix seconds) for the video with this id."""
        expires = int(now if now is not None else time.time()) + self.ttl_s
        return f"/media/videos/{image_id}?expires={expires}&sig={self._sign(image_id, expires)}", (
            expires
        )

    def valid(self, image_id: int, expires: int, sig: str, now: float | None = None) -> bool:
        """Whether `sig` is this server's ticket for the video, and it has not expired."""
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(sig.encode(), self._sign(image_id, expires).encode())

    def _sign(self, image_id: int, expires: int) -> str:
        message = f"{int(image_id)}:{int(expires)}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
