"""The object both transports share: the engine and the session manager, started together.

Built once per process (in the app lifespan, see `server`); HTTP and gRPC
handlers only validate, call it and map results and errors.
"""

from __future__ import annotations

from services.common.health import Readiness
from services.common.metrics import ServiceMetrics
from services.simulator.engine import EngineConfig, SimulatorEngine
from services.simulator.sessions import SessionConfig, SessionManager
from services.simulator.settings import SimulatorSettings
from wmpo.sampling.world_model import WorldModel

SERVICE = "simulator"
VERSION = "0.1.0"


class SimulatorRuntime:
    def __init__(self, world_model: WorldModel, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(SERVICE)
        self.engine = SimulatorEngine(
            world_model, EngineConfig.from_settings(settings), self.metrics
        )
        self.sessions = SessionManager(
            self.engine, SessionConfig.from_settings(settings), self.metrics
        )

    async def start(self) -> None:
        await self.engine.start()
        await self.sessions.start()

    async def stop(self) -> None:
        # Sessions first: nothing may step them while the engine drains.
        await self.sessions.stop()
        await self.engine.stop()

    def readiness(self) -> Readiness:
        if self.engine.running:
            return Readiness(True)
        return Readiness(False, "the simulator engine is not running")
