"""Running the app: uvicorn with the service's connection deadlines, and the address checks before it.

The header deadline is built on uvicorn's HTTP protocol class and reads one private attribute,
`protocol.cycle.response_complete` (uvicorn 0.55 has no public setting for a header deadline:
`timeout_keep_alive` starts only after a response, and `h11_max_incomplete_event_size` bounds
bytes, not time). So pyproject.toml pins the uvicorn range this was tested with, and
tests/test_serve.py reads that attribute on a live connection: an upgrade that renames it fails
there, not silently in production.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
from pathlib import Path

from cifarlab.serve.app import ServeError, app, configure
from cifarlab.serve.limits import HEADER_TIMEOUT_S, KEEP_ALIVE_S

logger = logging.getLogger("cifarlab.serve")


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def check_port(host: str, port: int) -> None:
    """A one-line error now rather than uvicorn's log lines when the address cannot be used."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: must be a port number from 1 to 65535 (0: any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def timeout_response(detail: str) -> bytes:
    """A complete HTTP 408 answer, written to the socket directly (no request exists to answer)."""
    body = json.dumps({"detail": detail}).encode()
    head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP protocol, plus a deadline for each request's line and headers.

    uvicorn closes idle keep-alive connections but waits forever for a fresh connection's first
    request, or for headers that never end (200 half-sent requests were all still open after
    30 s). The headers must be complete within `seconds` of the connection's start, or, on a
    kept-alive connection, of the next request's first byte; if not, a client that sent
    something gets a 408, and the connection is closed.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    # uvicorn declares AutoHTTPProtocol a variable (the h11 or httptools class, chosen at its import)
    class HeaderDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[valid-type,misc]
        timer: asyncio.TimerHandle | None = None
        partial = False  # some bytes of the awaited headers arrived

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_deadline()

        def data_received(self, data: bytes) -> None:
            if self.timer is None and self._between_requests():
                self._start_deadline()  # a kept-alive connection's next request begins
            if self.timer is not None:
                self.partial = True
            super().data_received(data)
            if not self._between_requests():  # uvicorn parsed the headers and started the request
                self._stop()

        def connection_lost(self, exc) -> None:
            self._stop()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _start_deadline(self) -> None:
            self.timer = asyncio.get_running_loop().call_later(seconds, self._headers_too_slow)
            self.partial = False

        def _stop(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def _headers_too_slow(self) -> None:
            self.timer = None
            if self.transport.is_closing():
                return
            if self.partial:
                self.transport.write(timeout_response(f"request headers not complete within {seconds:g} s"))
            self.transport.close()

    return HeaderDeadlineProtocol


def log_config() -> dict:
    """uvicorn's logging, plus the service's own one-line warnings in the same format."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"][logger.name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def make_server(
    asgi_app,
    host: str = "127.0.0.1",
    port: int = 8000,
    keep_alive_s: float = KEEP_ALIVE_S,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    logging_config: dict | None = None,
):
    """A uvicorn server for the app with the service's connection deadlines; `.run()` serves."""
    try:
        import uvicorn
    except ImportError as e:
        raise ServeError(f"{e}: pip install 'cifarlab[serve]'") from None
    if keep_alive_s <= 0 or header_timeout_s <= 0:
        raise ServeError("--keep-alive and --header-timeout must be positive")
    config = uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        http=header_deadline_protocol(header_timeout_s),
        # typed int, but used as loop.call_later's seconds, which a float (e.g. 0.5) is
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        log_config=logging_config,
    )
    return uvicorn.Server(config)


def serve(
    checkpoint: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    log=print,
    keep_alive_s: float = KEEP_ALIVE_S,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    **options,
) -> None:
    """Run the module's app serving `checkpoint` with uvicorn until interrupted; `options` go to configure."""
    service = configure(app, checkpoint, **options)
    server = make_server(app, host, port, keep_alive_s, header_timeout_s, logging_config=log_config())
    check_port(host, port)
    if not is_loopback(host):
        log(f"warning: listening on {host}, reachable from other machines; there is no authentication")
    log(f"serving {service.model_name} from {service.predictor.checkpoint} at http://{host}:{port}/ (Ctrl-C to stop)")
    server.run()
