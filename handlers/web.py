"""The chat page at `GET /` and its static files, both behind the edge and under the page CSP.

The page is `server/static/index.html` rendered as a Tornado template, only so it can link `app.js` and
`app.css` by `static_url` (a content hash in `?v=`, so browsers cache them for good and still see every
change) and show the key field when client keys are on. The page itself is `no-cache`.
With `WEB_UI_ENABLED=false` none of this is routed and `/` and `/static/*` get the JSON 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tornado.web import HTTPError, StaticFileHandler

import server
from handlers.base import BaseHandler
from middleware.security_headers import PAGE_CSP

STATIC_DIR = Path(server.__file__).resolve().parent / "static"
PAGE = "index.html"


class PageHandler(BaseHandler):
    route = "/"
    rate_limited = False
    csp = PAGE_CSP

    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.render(PAGE, keys_required=self.gateway.client_keys.enabled)

    def head(self) -> None:
        self.get()  # the same headers as GET (Cache-Control included); Tornado drops the body for HEAD


class StaticHandler(BaseHandler, StaticFileHandler):
    """Tornado's static files (ETag, Last-Modified, long max-age with `?v=`) with the edge's headers and errors."""

    route = "/static/{path}"
    rate_limited = False
    csp = PAGE_CSP

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        # the page template is served rendered at `/` only; no file name holds a NUL (os.stat would raise)
        if Path(absolute_path).name == PAGE or "\x00" in absolute_path:
            raise HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)


def web_settings() -> dict[str, Any]:
    """Application settings for the page: Tornado routes `/static/(.*)` to `StaticHandler` from these."""
    return {"static_path": str(STATIC_DIR), "template_path": str(STATIC_DIR), "static_handler_class": StaticHandler}


WEB_ROUTES: list[tuple[str, type]] = [(r"/", PageHandler)]
