"""`GET /v1/usage`: the caller's own budget window (client key as for /v1), so a client can pace itself."""

from __future__ import annotations

from handlers.base import BaseHandler
from server.errors import ApiError


class UsageHandler(BaseHandler):
    route = "/v1/usage"
    error_style = "openai"
    protected = True

    async def get(self) -> None:
        budgets = self.gateway.budgets
        standing = self.budget or await budgets.standing(self.client_id, budgets.limits_for(self.key_id))
        if standing is None:
            raise ApiError(503, "budget_store_unavailable", "the budget store is unreachable; retry shortly", headers={"Retry-After": "1"})
        self.write(standing.as_json())
