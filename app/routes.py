"""The routes: one table, every handler behind the edge."""

from __future__ import annotations

from tornado.web import Application

from handlers.base import NotFoundHandler
from handlers.chat import ChatHandler
from handlers.health import HealthHandler
from handlers.metrics import MetricsHandler
from handlers.openai import ChatCompletionsHandler, ModelHandler, ModelsHandler, OpenAINotFoundHandler
from handlers.streams import StreamsHandler
from handlers.usage import UsageHandler
from handlers.web import WEB_ROUTES, web_settings
from middleware.edge import log_completed
from server.config import Settings
from server.state import Gateway


def make_app(settings: Settings, gateway: Gateway | None = None) -> Application:
    gateway = gateway or Gateway.create(settings)
    routes: list[tuple] = [
        (r"/chat", ChatHandler),
        (r"/chat/streams/([^/]+)", StreamsHandler),
        (r"/health", HealthHandler),
        (r"/v1/chat/completions", ChatCompletionsHandler),
        (r"/v1/models", ModelsHandler),
        (r"/v1/models/(.+)", ModelHandler),
        (r"/v1/usage", UsageHandler),
        (r"/v1/.*", OpenAINotFoundHandler),
    ]
    if settings.metrics_enabled:
        routes.append((r"/metrics", MetricsHandler))
    web: dict = {}
    if settings.web_ui_enabled:
        routes += WEB_ROUTES
        web = web_settings()
    return Application(
        routes,
        gateway=gateway,
        default_handler_class=NotFoundHandler,
        log_function=log_completed,
        compress_response=False,
        **web,
    )
