"""The interactive API documentation, served with everything it needs (no CDN).

Swagger UI's files come from the pinned ``swagger-ui-bundle-v2`` package and are served
under ``/schema/static/``, so ``/schema`` and ``/schema/swagger`` work offline and in
air-gapped clusters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

if TYPE_CHECKING:
    from litestar import Router

__all__ = ["OfflineSwaggerUI"]

_ASSETS = "/schema/static"  # the schema router's own path (OpenAPIConfig.path) + /static


class OfflineSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI at ``paths`` (the first plugin also serves ``/schema``), from local files."""

    def __init__(self, path: str = "/swagger") -> None:
        super().__init__(
            js_url=f"{_ASSETS}/swagger-ui-bundle.js",
            css_url=f"{_ASSETS}/swagger-ui.css",
            standalone_preset_js_url=f"{_ASSETS}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{_ASSETS}/favicon-32x32.png'>",
            path=path,
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)  # oauth2-redirect.html
        router.register(
            create_static_files_router(
                path="/static",
                directories=[Path(str(swagger_ui_path))],
                name="swagger-ui-assets",
                include_in_schema=False,
            )
        )
