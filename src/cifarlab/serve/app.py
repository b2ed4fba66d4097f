"""A small HTTP service around a checkpoint: FastAPI app, micro-batched inference, uvicorn.

    POST /predict   multipart upload, field `file` (curl -F file=@img.png) -> JSON top-k
    GET  /health    model, classes and batching counters
    GET  /          one-page upload form showing the image and its predicted classes

Requests arriving together are answered by one forward pass: `MicroBatcher` collects what
is queued (waiting `max_wait_ms` after the first request, at most `max_batch` images), runs
the batch on one worker thread and hands each request its row. Images are decoded by
`cifarlab.predict.load_image` (the same checks and conversions as `cifarlab predict`).
Every bad request gets a 4xx JSON `{"detail": "..."}`; the server keeps serving.

Abuse is bounded: a connection must complete its headers within `header_timeout_s` and its body
within `body_timeout_s` (else 408 and closed), an idle keep-alive connection is closed after
`keep_alive_s`; images above `max_pixels` are refused before decoding (422), decoding runs on
`decode_workers` threads with at most `decode_queue` uploads waiting (else 503 with Retry-After);
a client that disconnects mid-upload is one warning line in the log.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name
# classes imported inside create_app.
import asyncio
import contextlib
import copy
import functools
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor
from cifarlab.inference.predict import ImageError, load_image

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

logger = logging.getLogger("cifarlab.serve")


class ServeError(CifarlabError):
    """The service cannot start (missing packages, bad options); the message is one line."""


class UploadTooLarge(Exception):
    def __init__(self, limit: int, size: int | None = None):
        self.limit, self.size = limit, size


class BodyTimeout(Exception):
    """The request body did not arrive within the deadline."""


class Overloaded(Exception):
    """Every decode thread is busy and the waiting queue is full."""


class MicroBatcher:
    """Collects single images from concurrent requests into batches for one model function."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        # One thread: forward passes run one after another, each using torch's own threads.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarlab-model")
        self.requests = self.batches = self.largest_batch = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def submit(self, image: torch.Tensor) -> torch.Tensor:
        """The model's output row for one image, computed in a batch with whatever else is queued."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((image, future))
        return await future

    def _drain(self, items: list) -> None:
        while len(items) < self.max_batch:
            try:
                items.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            self._drain(items)
            if len(items) < self.max_batch and self.max_wait > 0:
                await asyncio.sleep(self.max_wait)  # let requests arriving together join in
                self._drain(items)
            items = [(image, future) for image, future in items if not future.done()]  # drop cancelled ones
            if not items:
                continue
            try:
                out = await loop.run_in_executor(self.executor, self.fn, torch.stack([image for image, _ in items]))
            except Exception as e:  # noqa: BLE001  (a failed batch fails its requests, not the server)
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.requests += len(items)
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(items))
            for (_, future), row in zip(items, out):
                if not future.done():
                    future.set_result(row)

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch": self.requests / self.batches if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000,
        }


class DecodePool:
    """Decodes uploads on a few threads and refuses work beyond a bounded queue.

    Unbounded, 40 concurrent 4096x4096 uploads took the service from 0.3 to 2.6 GB and a normal
    request to 6.6 s. Now at most `workers` images are decoded at once and `queue` more wait
    (their compressed bytes only); anything beyond is refused with Overloaded (503).
    """

    def __init__(self, decode: Callable[[bytes], object], workers: int = DECODE_WORKERS, queue: int = DECODE_QUEUE):
        self.decode, self.capacity = decode, workers + queue
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cifarlab-decode")
        # Admitted on the event loop, released on a decode thread when its work is really done.
        self.lock = threading.Lock()
        self.pending = self.refused = 0

    async def __call__(self, data: bytes):
        with self.lock:
            if self.pending >= self.capacity:
                self.refused += 1
                raise Overloaded
            self.pending += 1
        job = self.executor.submit(self.decode, data)
        # Counted until its thread finishes, even when the request is gone: a client that
        # disconnects does not free the memory its decode is using.
        job.add_done_callback(self._release)
        return await asyncio.wrap_future(job)

    def _release(self, _job) -> None:
        with self.lock:
            self.pending -= 1

    def stats(self) -> dict:
        return {"decode_pending": self.pending, "decode_capacity": self.capacity, "decode_refused": self.refused}


class BodyDeadline:
    """ASGI middleware: a request's whole body must arrive within `seconds` of its headers.

    One deadline for the body, not one per read, so a client sending a byte a second cannot
    hold the connection either. Reads after the body (waiting for a disconnect) are not timed.
    """

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_complete = False

        async def receive_by_deadline():
            nonlocal body_complete
            if body_complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise BodyTimeout from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_by_deadline, send)


class BodyLimit:
    """ASGI middleware: a request body above `limit` bytes is refused before it is all read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLarge(self.limit - MULTIPART_OVERHEAD)
            return message

        await self.app(scope, limited_receive, send)


def create_app(
    checkpoint: Path | str,
    device: str = "cpu",
    top_k: int = 5,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_batch: int = MAX_BATCH,
    max_wait_ms: float = MAX_WAIT_MS,
    amp: str = "off",
    max_pixels: int = MAX_SERVE_PIXELS,
    decode_workers: int = DECODE_WORKERS,
    decode_queue: int = DECODE_QUEUE,
    body_timeout_s: float = BODY_TIMEOUT_S,
    calibrated: bool = False,
):
    """The FastAPI application serving one checkpoint (a run directory or checkpoint file);
    `calibrated` scales its probabilities by the temperature `cifarlab calibrate` stored in the run."""
    try:
        from fastapi import FastAPI, HTTPException, Query, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.datastructures import UploadFile
        from starlette.requests import ClientDisconnect
    except ImportError as e:
        raise ServeError(f"{e}: pip install 'cifarlab[serve]'") from None
    if min(max_upload_bytes, max_batch, top_k, max_pixels, decode_workers) < 1 or max_wait_ms < 0 or decode_queue < 0:
        raise ServeError("--max-upload-bytes, --max-batch, --top-k, --max-pixels and --decode-workers must be "
                         "positive and --max-wait-ms and --decode-queue not negative")
    if body_timeout_s <= 0:
        raise ServeError("--body-timeout must be positive")

    predictor = Predictor(checkpoint, device=device, batch_size=max_batch, amp=amp, calibrated=calibrated)
    classes = predictor.classes
    batcher = MicroBatcher(predictor.logits, max_batch, max_wait_ms)
    decoder = DecodePool(functools.partial(load_image, max_pixels=max_pixels), decode_workers, decode_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()
        decoder.executor.shutdown(wait=True)

    app = FastAPI(title="cifarlab", summary=f"CIFAR-10 classifier {predictor.meta['model']}", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(BodyDeadline, seconds=body_timeout_s)
    app.state.predictor, app.state.batcher, app.state.decoder = predictor, batcher, decoder

    @app.exception_handler(UploadTooLarge)
    async def too_large(request, exc: UploadTooLarge):
        size = f" ({exc.size:,} bytes)" if exc.size else ""
        return JSONResponse({"detail": f"upload too large{size}: the limit is {exc.limit:,} bytes"}, status_code=413)

    @app.exception_handler(BodyTimeout)
    async def body_too_slow(request, exc: BodyTimeout):
        # The rest of the body may still be on its way: close rather than read it.
        return JSONResponse({"detail": f"request body not complete within {body_timeout_s:g} s"},
                            status_code=408, headers={"Connection": "close"})

    @app.exception_handler(Overloaded)
    async def overloaded(request, exc: Overloaded):
        return JSONResponse({"detail": "too many images being decoded: try again shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request, exc: ClientDisconnect):
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        logger.warning("client %s disconnected during its upload (%s %s)", client, request.method, request.url.path)
        return Response(status_code=499)  # never sent: there is nobody to send it to

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": predictor.meta["model"], "checkpoint": str(predictor.checkpoint),
                "classes": classes, "device": str(predictor.device), "temperature": predictor.temperature, **batcher.stats(), **decoder.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (UPLOAD_PAGE.replace("{{MODEL}}", predictor.meta["model"])
                .replace("{{LIMIT}}", f"{max_upload_bytes:,}").replace("{{PIXELS}}", f"{max_pixels:,}"))

    @app.post("/predict")
    async def predict(request: Request, k: int = Query(top_k, alias="top_k", ge=1, le=len(classes), description="classes to return")):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + MULTIPART_OVERHEAD:
            raise UploadTooLarge(max_upload_bytes, int(declared))
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):  # any letter case
            raise HTTPException(415, "send the image as multipart/form-data in a field named 'file' (curl -F file=@img.png)")
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "no file in the form field 'file' (curl -F file=@img.png)")
            data = await upload.read(max_upload_bytes + 1)
            filename = upload.filename
        if len(data) > max_upload_bytes:
            raise UploadTooLarge(max_upload_bytes)
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        try:
            image = await decoder(data)
        except ImageError as e:
            raise HTTPException(422, f"{filename or 'upload'}: {e}") from None
        logits = await batcher.submit(image.pixels)
        top = predictor.top_k(logits.unsqueeze(0), k)[0]
        return {
            "filename": filename,
            "top1": top[0][0],
            "top1_prob": top[0][1],
            "top_k": [{"class": c, "prob": p} for c, p in top],
            "converted": list(image.converted),
            "original_size": list(image.original_size),
            "original_mode": image.original_mode,
        }

    return app


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
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
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

    class HeaderDeadlineProtocol(AutoHTTPProtocol):
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


def make_server(app, host: str = "127.0.0.1", port: int = 8000, keep_alive_s: float = KEEP_ALIVE_S,
                header_timeout_s: float = HEADER_TIMEOUT_S, logging_config: dict | None = None):
    """A uvicorn server for the app with the service's connection deadlines; `.run()` serves."""
    try:
        import uvicorn
    except ImportError as e:
        raise ServeError(f"{e}: pip install 'cifarlab[serve]'") from None
    if keep_alive_s <= 0 or header_timeout_s <= 0:
        raise ServeError("--keep-alive and --header-timeout must be positive")
    config = uvicorn.Config(app, host=host, port=port, http=header_deadline_protocol(header_timeout_s),
                            timeout_keep_alive=keep_alive_s, log_level="warning", access_log=False,
                            log_config=logging_config)
    return uvicorn.Server(config)


def serve(checkpoint: Path | str, host: str = "127.0.0.1", port: int = 8000, log=print,
          keep_alive_s: float = KEEP_ALIVE_S, header_timeout_s: float = HEADER_TIMEOUT_S, **options) -> None:
    """Run the service with uvicorn until interrupted; `options` go to create_app."""
    app = create_app(checkpoint, **options)
    server = make_server(app, host, port, keep_alive_s, header_timeout_s, logging_config=log_config())
    predictor = app.state.predictor
    check_port(host, port)
    if not is_loopback(host):
        log(f"warning: listening on {host}, reachable from other machines; there is no authentication")
    log(f"serving {predictor.meta['model']} from {predictor.checkpoint} at http://{host}:{port}/ (Ctrl-C to stop)")
    server.run()


UPLOAD_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cifarlab: classify an image</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  form { display: flex; gap: .5rem; align-items: center; margin: 1rem 0; }
  #preview { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #ccc; object-fit: contain; display: none; }
  table { border-collapse: collapse; margin-top: 1rem; }
  td { padding: .2rem .6rem; } td.p { text-align: right; font-variant-numeric: tabular-nums; }
  .bar { background: #4a7bd0; height: .8rem; }
  #error { color: #b00020; }
  small { color: #666; }
</style>
</head>
<body>
<h1>Classify an image</h1>
<p>Model <code>{{MODEL}}</code>, ten CIFAR-10 classes. Any image Pillow reads, up to {{LIMIT}} bytes
and {{PIXELS}} pixels;
it is centre-cropped to a square and resized to 32&times;32.</p>
<form id="form">
  <input type="file" id="file" name="file" accept="image/*" required>
  <button type="submit">Classify</button>
</form>
<div id="result">
  <img id="preview" alt="uploaded image">
  <p id="top1"></p>
  <table id="classes"></table>
  <p id="notes"><small></small></p>
  <p id="error"></p>
</div>
<script>
const form = document.getElementById("form"), input = document.getElementById("file");
const preview = document.getElementById("preview"), top1 = document.getElementById("top1");
const table = document.getElementById("classes"), error = document.getElementById("error");
const notes = document.querySelector("#notes small");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = input.files[0];
  if (!file) return;
  top1.textContent = ""; table.replaceChildren(); error.textContent = ""; notes.textContent = "";
  preview.src = URL.createObjectURL(file); preview.style.display = "block";
  const body = new FormData(); body.append("file", file);
  try {
    const response = await fetch("predict", { method: "POST", body });
    const answer = await response.json();
    if (!response.ok) { error.textContent = "Error: " + answer.detail; return; }
    top1.innerHTML = "Predicted: <strong id='predicted'></strong>";
    document.getElementById("predicted").textContent = answer.top1;
    for (const { class: name, prob } of answer.top_k) {
      const row = table.insertRow();
      row.insertCell().textContent = name;
      const p = row.insertCell(); p.className = "p"; p.textContent = (100 * prob).toFixed(1) + "%";
      const bar = document.createElement("div"); bar.className = "bar"; bar.style.width = (150 * prob) + "px";
      row.insertCell().appendChild(bar);
    }
    if (answer.converted.length) notes.textContent = "Converted: " + answer.converted.join("; ");
  } catch (e) { error.textContent = "Error: " + e; }
});
</script>
</body>
</html>
"""
