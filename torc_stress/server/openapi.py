"""The server's own OpenAPI 3 document, generated from its route table.

Each operation declares its path parameters (integer ids unless :data:`openapi_schemas.PATH`
says otherwise), its query parameters, its JSON body and its answers from the tables in
:mod:`torc_stress.server.openapi_schemas`, so that a fuzzer (schemathesis) can exercise them.
"""

from __future__ import annotations

import re
from typing import Any

from torc_stress import __version__
from torc_stress.server.openapi_schemas import ANSWER, BODY, INT, PATH, QUERY, SCHEMAS

_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def _parameters(key: str, path: str) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": PATH.get(name, INT)}
        for name in re.findall(r"{(\w+)}", path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in QUERY.get(key, {}).items()
    ]
    return params


def _operation(method: str, path: str, fn: Any, summary: str) -> dict[str, Any]:
    key = f"{method} {path}"
    answer: dict[str, Any] = {"description": "success", "content": {
        "application/json": {"schema": ANSWER.get(key, {})}}}
    operation: dict[str, Any] = {
        "operationId": getattr(fn, "__name__", "op"),
        "summary": summary,
        "parameters": _parameters(key, path),
        "responses": {
            "200": answer,
            "default": {"description": "error",
                        "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    if key in BODY:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{BODY[key]}"}}}}
    return operation


def build_document(routes: list[tuple[str, str, Any, str]], prefix: str) -> dict[str, Any]:
    """Builds an OpenAPI 3.0 document of every route: parameters, bodies and answers."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, fn, summary in routes:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, fn, summary)
    return {
        "openapi": "3.0.3",
        "info": {"title": "torc-stress server (torc-compatible)", "version": __version__},
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
