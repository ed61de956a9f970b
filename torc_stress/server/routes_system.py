"""Liveness, version, metrics and OpenAPI routes (Starlette handlers)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from torc_stress import __version__
from torc_stress.server.api_base import ApiBase
from torc_stress.server.http_io import (
    PREFIX,
    JsonResponse,
)


class SystemRoutes(ApiBase):
    """Liveness, version, metrics and OpenAPI routes."""

    async def ping(self, request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    async def version(self, request: Request) -> Response:
        return JsonResponse(
            {"version": __version__, "api_version": "0.21.0", "git_hash": "torc-stress"}
        )

    async def get_metrics(self, request: Request) -> Response:
        return JsonResponse(self.metrics.document())

    async def openapi(self, request: Request) -> Response:
        from torc_stress.server.openapi import build_document

        return JsonResponse(build_document(self.routes, PREFIX))
