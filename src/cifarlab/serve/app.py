"""A small HTTP service around a checkpoint: a module-level FastAPI app, its router and its service.

    POST /predict   multipart upload, field `file` (curl -F file=@img.png) -> JSON top-k
    GET  /health    model, classes and batching counters (HEAD too)
    GET  /          one-page upload form showing the image and its predicted classes (HEAD too)

`app` is the application; `configure(app, checkpoint, ...)` loads the model into `app.state.service`
(model, micro-batcher, decode pool, limits), and the endpoints receive it as a dependency.
`create_app(checkpoint, ...)` builds and configures a fresh app (several in one process, in tests).

Requests arriving together are answered by one forward pass (batching.MicroBatcher). Images are
decoded by `cifarlab.inference.predict.load_image` (the same checks and conversions as `cifarlab
predict`) on a bounded pool (batching.DecodePool). Every bad request gets a 4xx JSON
`{"detail": "..."}` of one line, documented in /openapi.json; the server keeps serving. The limits
and their middleware are in limits.py, the uvicorn server with its header deadline in server.py.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at import.
import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jinja2
import torch
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from cifarlab.inference.model import Predictor, TopKError
from cifarlab.inference.predict import ImageError, load_image
from cifarlab.serve.batching import DecodePool, MicroBatcher
from cifarlab.serve.limits import (
    BODY_TIMEOUT_S,
    DECODE_QUEUE,
    DECODE_WORKERS,
    MAX_BATCH,
    MAX_SERVE_PIXELS,
    MAX_UPLOAD_BYTES,
    MAX_WAIT_MS,
    MULTIPART_OVERHEAD,
    BodyDeadline,
    BodyLimit,
    BodyTimeout,
    Overloaded,
    ServeError,
    UploadTooLarge,
)
from cifarlab.serve.openapi import (
    ERROR_RESPONSES,
    HEAD_OK,
    UPLOAD_BODY,
    Health,
    Prediction,
    document_top_k,
)

logger = logging.getLogger("cifarlab.serve")
PAGES = jinja2.Environment(loader=jinja2.PackageLoader("cifarlab", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)


@dataclass(frozen=True)
class Settings:
    """The service's limits (the `cifarlab serve` flags of the same names)."""

    top_k: int = 5
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    max_pixels: int = MAX_SERVE_PIXELS
    decode_workers: int = DECODE_WORKERS
    decode_queue: int = DECODE_QUEUE
    body_timeout_s: float = BODY_TIMEOUT_S

    def __post_init__(self):
        if (
            min(self.max_upload_bytes, self.max_batch, self.top_k, self.max_pixels, self.decode_workers) < 1
            or self.max_wait_ms < 0
            or self.decode_queue < 0
        ):
            raise ServeError(
                "--max-upload-bytes, --max-batch, --top-k, --max-pixels and --decode-workers must be "
                "positive and --max-wait-ms and --decode-queue not negative"
            )
        if self.body_timeout_s <= 0:
            raise ServeError("--body-timeout must be positive")


@dataclass(frozen=True)
class Service:
    """One loaded model and the queues in front of it."""

    predictor: Predictor
    settings: Settings
    batcher: MicroBatcher
    decoder: DecodePool

    @property
    def model_name(self) -> str:
        return self.predictor.meta["model"]


def configure(application: FastAPI, checkpoint: Path | str, device: str = "cpu", amp: str = "off", calibrated: bool = False, **limits) -> Service:
    """Load `checkpoint` (a run, a checkpoint file or an export) into `application`, which then
    serves it; `calibrated` scales its probabilities by the temperature `cifarlab calibrate` stored."""
    settings = Settings(**limits)
    predictor = Predictor(checkpoint, device=device, batch_size=settings.max_batch, amp=amp, calibrated=calibrated)
    predictor.check_top_k(settings.top_k, "--top-k")
    # One forward pass now: weights or a temperature giving NaN probabilities stop the start with
    # one line (NonFiniteProbabilities), rather than failing every request later.
    predictor.top_k(predictor.logits(torch.zeros(1, *predictor.meta.get("input_size", (3, 32, 32)), dtype=torch.uint8)), 1)
    decode = functools.partial(load_image, max_pixels=settings.max_pixels)
    service = Service(
        predictor,
        settings,
        MicroBatcher(predictor.logits, settings.max_batch, settings.max_wait_ms),
        DecodePool(decode, settings.decode_workers, settings.decode_queue),
    )
    application.state.service = service
    application.summary = f"CIFAR-10 classifier {service.model_name}"
    application.openapi_schema = None  # rebuilt for this model (its classes bound ?top_k=)
    return service


def create_app(checkpoint: Path | str, **options) -> FastAPI:
    """A new app serving `checkpoint`; `options` go to `configure`."""
    application = build_app()
    configure(application, checkpoint, **options)
    return application


def service_of(application: FastAPI) -> Service:
    service = getattr(application.state, "service", None)
    if service is None:
        raise ServeError("the app serves no model: call cifarlab.serve.configure(app, checkpoint) first")
    return service


def get_service(request: Request) -> Service:
    """The endpoints' dependency: the service `configure` set up for this app."""
    return service_of(request.app)


ServiceDependency = Annotated[Service, Depends(get_service)]
router = APIRouter()


@router.get("/health", response_model=Health, summary="the model, its classes and the service's counters")
async def health(service: ServiceDependency):
    predictor = service.predictor
    return {
        "status": "ok",
        "model": service.model_name,
        "checkpoint": str(predictor.checkpoint),
        "classes": predictor.classes,
        "device": str(predictor.device),
        "temperature": predictor.temperature,
        **service.batcher.stats(),
        **service.decoder.stats(),
    }


@router.head("/health", response_class=Response, responses=HEAD_OK, summary="whether the service is up")
async def health_head(service: ServiceDependency):
    return Response(media_type="application/json")


@router.get("/", response_class=HTMLResponse, summary="an upload page classifying an image in the browser")
async def page(service: ServiceDependency):
    settings = service.settings
    return PAGES.get_template("upload.html").render(
        model=service.model_name,
        classes=len(service.predictor.classes),
        upload_limit=f"{settings.max_upload_bytes:,}",
        pixel_limit=f"{settings.max_pixels:,}",
    )


@router.head("/", response_class=Response, responses=HEAD_OK, summary="whether the upload page is there")
async def page_head(service: ServiceDependency):
    return Response(media_type="text/html; charset=utf-8")


def check_part_type(content_type: str | None) -> None:
    """The file part's own Content-Type, where the client gave one, names an image or raw bytes (as
    browsers and curl send for a file of unknown kind): the schema's encoding says so (openapi.py)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise HTTPException(415, f"the file part's Content-Type {kind[:60]!r} is not an image type (image/png, image/jpeg, ...)")


async def read_upload(request: Request, upload_limit: int) -> tuple[bytes, str | None]:
    """The bytes and file name of the multipart field `file`, refused (4xx) when absent or too large."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > upload_limit + MULTIPART_OVERHEAD:
        raise UploadTooLarge(upload_limit, int(declared))
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):  # any letter case
        raise HTTPException(415, "send the image as multipart/form-data in a field named 'file' (curl -F file=@img.png)")
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "no file in the form field 'file' (curl -F file=@img.png)")
        others = sorted(set(form.keys()) - {"file"})
        if others:
            raise HTTPException(400, f"unexpected form field {others[0][:40]!r}: send only the field 'file'")
        check_part_type(upload.content_type)
        data = await upload.read(upload_limit + 1)
        filename = upload.filename
    if len(data) > upload_limit:
        raise UploadTooLarge(upload_limit)
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    return data, filename


@router.post("/predict", response_model=Prediction, responses=ERROR_RESPONSES, openapi_extra=UPLOAD_BODY, summary="classify one uploaded image")
async def predict(
    request: Request,
    service: ServiceDependency,
    top_k: Annotated[int | None, Query(ge=1, description="classes to return (default: serve --top-k)")] = None,
):
    k = service.predictor.check_top_k(service.settings.top_k if top_k is None else top_k, "top_k")
    data, filename = await read_upload(request, service.settings.max_upload_bytes)
    try:
        image = await service.decoder(data)
    except ImageError as e:
        raise HTTPException(422, f"{filename or 'upload'}: {e}") from None
    logits = await service.batcher.submit(image.pixels)
    top = service.predictor.top_k(logits.unsqueeze(0), k)[0]
    return {
        "filename": filename,
        "top1": top[0][0],
        "top1_prob": top[0][1],
        "top_k": [{"class": c, "prob": p} for c, p in top],
        "converted": list(image.converted),
        "original_size": list(image.original_size),
        "original_mode": image.original_mode,
    }


def one_line(status: int, detail: str, **headers) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


async def too_large(request, exc: UploadTooLarge):
    size = f" ({exc.size:,} bytes)" if exc.size else ""
    return one_line(413, f"upload too large{size}: the limit is {exc.limit:,} bytes")


async def body_too_slow(request, exc: BodyTimeout):
    # The rest of the body may still be on its way: close rather than read it.
    return one_line(408, f"request body not complete within {exc.seconds:g} s", Connection="close")


async def overloaded(request, exc: Overloaded):
    return one_line(503, "too many images being decoded: try again shortly", **{"Retry-After": "1"})


async def bad_top_k(request, exc: TopKError):
    return one_line(422, str(exc))


async def invalid_request(request, exc: RequestValidationError):
    """FastAPI's list of validation errors as one line, like every other 4xx of the service."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
    return one_line(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")


async def client_gone(request, exc: ClientDisconnect):
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    logger.warning("client %s disconnected during its upload (%s %s)", client, request.method, request.url.path)
    return Response(status_code=499)  # never sent: there is nobody to send it to


@contextlib.asynccontextmanager
async def lifespan(application: FastAPI):
    service = service_of(application)
    service.batcher.start()
    service.decoder.start()
    try:
        yield
    finally:
        await service.batcher.stop()
        service.decoder.stop()


def build_app() -> FastAPI:
    """The application: the router, the limits' middleware and the one-line error answers."""
    application = FastAPI(title="cifarlab", lifespan=lifespan)
    application.include_router(router)
    application.add_middleware(BodyLimit)
    application.add_middleware(BodyDeadline)
    for error, handler in (
        (UploadTooLarge, too_large),
        (BodyTimeout, body_too_slow),
        (Overloaded, overloaded),
        (TopKError, bad_top_k),
        (RequestValidationError, invalid_request),
        (ClientDisconnect, client_gone),
    ):
        # Starlette types a handler as taking any Exception; it calls each only with the class it is registered for
        application.add_exception_handler(error, handler)  # type: ignore[arg-type]
    # replacing the method is FastAPI's documented way to customise the schema
    application.openapi = functools.partial(document_top_k, application)  # type: ignore[method-assign]
    return application


app = build_app()
