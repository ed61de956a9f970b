"""The server's own OpenAPI 3 document, generated from its route table."""

from __future__ import annotations

import re
from typing import Any

from torc_stress import __version__


def build_document(routes: list[tuple[str, str, Any, str]], prefix: str) -> dict[str, Any]:
    """Builds an OpenAPI 3.0 document listing every route (method, path, summary, path params)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, fn, summary in routes:
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string" if name == "status" else "integer"}}
            for name in re.findall(r"{(\w+)}", path)
        ]
        operation = {
            "operationId": getattr(fn, "__name__", "op"),
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "success", "content": {"application/json": {}}},
                "default": {"description": "error",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
            },
        }
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "torc-stress server (torc-compatible)", "version": __version__},
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {"schemas": {"ErrorResponse": {
            "type": "object",
            "properties": {"error": {"type": "object"}, "errorMessage": {"type": "string"},
                           "code": {"type": "integer"}},
        }}},
    }
