"""The service's abuse limits: their defaults, the errors they raise and the ASGI middleware enforcing them.

A request body above the upload limit is refused before it is all read (413), and a body that
does not arrive within its deadline is refused too (408). Both middleware read their limits
from the configured service (`app.state.service.settings`), so one app class serves any limits.
"""

from __future__ import annotations

import asyncio

from cifarlab.errors import CifarlabError

MAX_UPLOAD_BYTES = 4 * 1024 * 1024
MULTIPART_OVERHEAD = 16 * 1024  # boundaries and part headers around the file
MAX_BATCH, MAX_WAIT_MS = 64, 2.0
# A CIFAR model sees 32x32, and the service decodes many uploads at once: a 2 Mpixel image
# (a 1920x1080 frame fits) holds 6 to 8 MB of pixels, predict's 4096x4096 limit 48 to 64 MB.
MAX_SERVE_PIXELS = 2048 * 1024
# Decode threads and uploads waiting for one: a full batch of uploads can wait, beyond that 503.
DECODE_WORKERS, DECODE_QUEUE = 2, 64
# Seconds: an idle keep-alive connection, a request's line and headers, a request's whole body
# (4 MiB in 30 s is about 1.1 Mbit/s).
KEEP_ALIVE_S, HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 5.0, 10.0, 30.0


class ServeError(CifarlabError):
    """The service cannot start (missing packages, bad options); the message is one line."""


class UploadTooLarge(Exception):
    def __init__(self, limit: int, size: int | None = None):
        self.limit, self.size = limit, size


class BodyTimeout(Exception):
    """The request body did not arrive within the deadline."""

    def __init__(self, seconds: float):
        self.seconds = seconds


class Overloaded(Exception):
    """Every decode thread is busy and the waiting queue is full."""


def _settings(scope):
    """The configured service's settings (the app sets itself as scope['app'] before its middleware)."""
    return scope["app"].state.service.settings


class BodyDeadline:
    """ASGI middleware: a request's whole body must arrive within `body_timeout_s` of its headers.

    One deadline for the body, not one per read, so a client sending a byte a second cannot
    hold the connection either. Reads after the body (waiting for a disconnect) are not timed.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seconds = _settings(scope).body_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        body_complete = False

        async def receive_by_deadline():
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise BodyTimeout(seconds) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_by_deadline, send)


class BodyLimit:
    """ASGI middleware: a request body above the upload limit (plus multipart framing) is refused
    before it is all read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload_limit = _settings(scope).max_upload_bytes
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > upload_limit + MULTIPART_OVERHEAD:
                raise UploadTooLarge(upload_limit)
            return message

        await self.app(scope, limited_receive, send)
