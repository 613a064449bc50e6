"""Errors as `{"detail": "<one clear sentence>"}`: request validation too, and so documented.

FastAPI answers a body or parameter that does not validate with a list of pydantic errors
(`HTTPValidationError`); the API's contract is one sentence naming the field and the problem,
for a person reading a CI log as much as for a program. The OpenAPI schema says the same, so a
client generated from it (and schemathesis) reads 422s as they are.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel

MAX_ERRORS = 3  # named in the sentence; the rest are counted


class Problem(BaseModel):
    """Why a request was refused, in one sentence."""

    detail: str


def problem(description: str) -> dict[str, Any]:
    """An entry of a route's `responses=`: a 4xx answered with a Problem."""
    return {"model": Problem, "description": description}


def validation_sentence(exc: RequestValidationError) -> str:
    """`body.saga_id: String should match pattern '...'; query.limit: ...` (the first few)."""
    errors = list(exc.errors())
    parts = []
    for err in errors[:MAX_ERRORS]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def _refuse_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_sentence(exc)}, status_code=422)


def install(app: FastAPI) -> None:
    """Answer validation errors as a Problem, and document every 422 as one."""
    app.add_exception_handler(RequestValidationError, _refuse_invalid)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes,
            )  # fmt: skip
            _problem_422s(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_422s(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema())
    ref = {"$ref": "#/components/schemas/Problem"}
    unreadable = {"description": "the body could not be read as JSON (UTF-8)",
                  "content": {"application/json": {"schema": ref}}}  # fmt: skip
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if (invalid := responses.get("422")) is not None:
                invalid["content"] = {"application/json": {"schema": ref}}
            if "requestBody" in operation:  # FastAPI's 400 for bytes it cannot decode
                responses.setdefault("400", unreadable)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, unless still used
        removed = components.pop(name, None)
        if removed is not None and f"#/components/schemas/{name}" in json.dumps(schema):
            components[name] = removed
