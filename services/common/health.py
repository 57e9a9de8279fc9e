"""Liveness (`/healthz`) and readiness (`/readyz`) routes.

Liveness only says the process answers HTTP; readiness asks the service (model
loaded? queue reachable?) through a callable, so Kubernetes stops routing to a
replica that cannot do work without restarting it. Neither needs an API key.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import JSONResponse

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
HEALTH_PATHS = frozenset({LIVENESS_PATH, READINESS_PATH})

log = logging.getLogger("wmpo.health")


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""


ReadinessCheck = Callable[[], bool | Readiness | Awaitable[bool | Readiness]]


async def evaluate(check: ReadinessCheck | None) -> Readiness:
    """Run a readiness check (sync or async); a check that raises means not ready."""
    if check is None:
        return Readiness(True)
    try:
        result = check()
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        # The reason shown to callers stays generic; the log has the details.
        log.exception("readiness check failed")
        return Readiness(False, "readiness check failed")
    return result if isinstance(result, Readiness) else Readiness(bool(result))


def health_router(readiness: ReadinessCheck | None = None) -> APIRouter:
    """Routes for the two probes; `readiness` defaults to always ready."""
    router = APIRouter(tags=["health"])

    @router.get(LIVENESS_PATH, summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        READINESS_PATH,
        summary="Readiness: the service can take work",
        responses={503: {"description": "Not ready; `reason` says why"}},
    )
    async def readyz() -> JSONResponse:
        state = await evaluate(readiness)
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": state.reason}, status_code=503)

    return router
