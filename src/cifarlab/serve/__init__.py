"""The HTTP service (`cifarlab serve`): FastAPI and uvicorn around one loaded model (app.py)."""

from cifarlab.serve.app import (
    BODY_TIMEOUT_S,
    DECODE_QUEUE,
    DECODE_WORKERS,
    HEADER_TIMEOUT_S,
    KEEP_ALIVE_S,
    MAX_BATCH,
    MAX_SERVE_PIXELS,
    MAX_UPLOAD_BYTES,
    MAX_WAIT_MS,
    DecodePool,
    MicroBatcher,
    ServeError,
    create_app,
    make_server,
    serve,
)

__all__ = [
    "BODY_TIMEOUT_S", "DECODE_QUEUE", "DECODE_WORKERS", "HEADER_TIMEOUT_S", "KEEP_ALIVE_S", "MAX_BATCH", "MAX_SERVE_PIXELS",
    "MAX_UPLOAD_BYTES", "MAX_WAIT_MS", "DecodePool", "MicroBatcher", "ServeError", "create_app", "make_server", "serve",
]
