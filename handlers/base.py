"""`BaseHandler` (the edge mixed into Tornado's RequestHandler) and the 404 handler."""

from __future__ import annotations

from tornado.web import HTTPError, RequestHandler

from middleware.edge import EdgeMixin


class BaseHandler(EdgeMixin, RequestHandler):
    """Every route inherits the edge from here."""


class NotFoundHandler(BaseHandler):
    """Unknown paths: a JSON 404 for any method, with all the edge's headers; OPTIONS gets its preflight.

    Rate limited like every route but /health, /metrics and preflights: a scanner's 404s count too.
    """

    def refuse_method(self) -> None:
        """Every method but OPTIONS lands here (the edge, rate limit included, ran first): no such path."""
        raise HTTPError(404)
