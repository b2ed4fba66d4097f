"""The HTTP service (`cifarlab serve`): a FastAPI app (app.py) around one loaded model, its limits
(limits.py), queues (batching.py), OpenAPI description (openapi.py) and uvicorn server (server.py).

The limits and ServeError import without the `serve` extra (the command line's help shows the
defaults); the app and the server need FastAPI and uvicorn, imported on first use. The app
itself is `cifarlab.serve.app.app` (the package's attribute `app` is that module).
"""

import importlib

from cifarlab.serve.limits import (
    BODY_TIMEOUT_S,
    DECODE_QUEUE,
    DECODE_WORKERS,
    HEADER_TIMEOUT_S,
    KEEP_ALIVE_S,
    MAX_BATCH,
    MAX_SERVE_PIXELS,
    MAX_UPLOAD_BYTES,
    MAX_WAIT_MS,
    ServeError,
)

_NEEDS_EXTRA = {
    "configure": "app",
    "create_app": "app",
    "Settings": "app",
    "Service": "app",
    "MicroBatcher": "batching",
    "DecodePool": "batching",
    "make_server": "server",
    "serve": "server",
}


def __getattr__(name: str):
    if name not in _NEEDS_EXTRA:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_NEEDS_EXTRA[name]}")
    except ModuleNotFoundError as e:
        raise ServeError(f"{e}: pip install 'cifarlab[serve]'") from None
    return getattr(module, name)


__all__ = [
    "BODY_TIMEOUT_S",
    "DECODE_QUEUE",
    "DECODE_WORKERS",
    "HEADER_TIMEOUT_S",
    "KEEP_ALIVE_S",
    "MAX_BATCH",
    "MAX_SERVE_PIXELS",
    "MAX_UPLOAD_BYTES",
    "MAX_WAIT_MS",
    "DecodePool",
    "MicroBatcher",
    "ServeError",
    "Service",
    "Settings",
    "configure",
    "create_app",
    "make_server",
    "serve",
]
