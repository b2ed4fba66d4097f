"""What /openapi.json says about the service: its answers' shapes, the upload and every status.

POST /predict reads its multipart body itself (to refuse an oversized one before parsing it), so
FastAPI cannot see the upload: UPLOAD_BODY documents it. ?top_k='s upper bound is the served
model's number of classes, filled in when the schema is built (`document_top_k`).
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorAnswer(BaseModel):
    detail: str = Field(description="what was wrong, in one line")


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class")
    prob: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    filename: str | None
    top1: str
    top1_prob: float = Field(ge=0, le=1)
    top_k: list[ClassProbability]
    converted: list[str] = Field(description="what was done to make the image 32x32 RGB")
    original_size: list[int] = Field(description="width and height as uploaded")
    original_mode: str = Field(description="Pillow's mode of the upload (RGB, L, RGBA...)")


class Health(BaseModel):
    status: str
    model: str
    checkpoint: str
    classes: list[str]
    device: str
    temperature: float | None
    requests: int
    batches: int
    mean_batch: float
    largest_batch: int
    max_batch: int
    max_wait_ms: float
    decode_pending: int
    decode_capacity: int
    decode_refused: int


def _error(description: str, **headers: str) -> dict:
    answer: dict = {"model": ErrorAnswer, "description": description}
    if headers:
        answer["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return answer


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("no field 'file' in the form, another field, an empty file, or a malformed multipart body"),
    408: _error("the request body did not arrive within --body-timeout"),
    413: _error("the upload is larger than --max-upload-bytes"),
    415: _error("the body is not multipart/form-data, or the file part's Content-Type is not an image type"),
    422: _error("not an image Pillow reads, more pixels than --max-pixels, or ?top_k= out of range"),
    503: _error("every decode thread is busy and the queue is full: retry", **{"Retry-After": "seconds to wait"}),
}
HEAD_OK: dict[int | str, dict[str, Any]] = {200: {"description": "as GET, without the body", "content": None}}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,  # any other field is refused (400)
                    "properties": {"file": {"type": "string", "format": "binary", "description": "an image file Pillow reads (PNG, JPEG, ...)"}},
                },
                "encoding": {"file": {"contentType": "image/*, application/octet-stream"}},
            }
        },
    }
}


def document_top_k(application) -> dict:
    """The app's OpenAPI schema, ?top_k= bounded by the served model's classes (built once per configure)."""
    from fastapi.openapi.utils import get_openapi

    if application.openapi_schema is None:
        schema = get_openapi(title=application.title, version=application.version, summary=application.summary, routes=application.routes)
        service = getattr(application.state, "service", None)
        for parameter in schema["paths"]["/predict"]["post"].get("parameters", []):
            if parameter["name"] == "top_k" and service is not None:
                for option in parameter["schema"].get("anyOf", [parameter["schema"]]):
                    if option.get("type") == "integer":
                        option["maximum"] = len(service.predictor.classes)
        application.openapi_schema = schema
    return application.openapi_schema
