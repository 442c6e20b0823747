"""The OpenAPI schema names the models this server actually serves.

A path or query parameter that selects a model (``{name}``, ``{version}``, ``?model=``) is declared
as ``type: string`` by the route; the server knows at start-up which values exist (models are loaded
once and never reloaded), so the published schema lists them as an ``enum``. Clients and generators
then see the valid names instead of discovering them by 404, and schema-driven testers (schemathesis)
reach the inference logic instead of the "unknown model" branch.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI


def publish_model_names(app: FastAPI, names: list[str], versions: list[str]) -> None:
    """Wrap ``app.openapi`` so that model-selecting parameters carry ``enum`` of the served values."""
    choices = {"name": sorted(names), "model": sorted(names), "version": sorted(set(versions))}
    base: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                        values = choices.get(param.get("name"))
                        if values and param.get("in") in ("path", "query"):
                            _set_enum(param, values)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _set_enum(param: dict[str, Any], values: list[str]) -> None:
    schema = param.setdefault("schema", {})
    variants = schema.get("anyOf")
    if isinstance(variants, list):  # Optional[str] query parameter: anyOf [string, null]
        for v in variants:
            if v.get("type") == "string":
                v["enum"] = values
                v.pop("maxLength", None)
        return
    schema["enum"] = values
