"""The event processor as its own service (to scale out): `python -m services.gateway.event_processor`.

Its boundary: this folder and `shared`, nothing else of the gateway. The gateway imports
`service.running_processor` to host the same processor in its own process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.gateway.event_processor import __version__
from services.gateway.event_processor import tuning as processor_tuning
from services.gateway.event_processor.breakers import DATABASE, processor_breakers
from services.gateway.event_processor.deps import Processor
from services.gateway.event_processor.service import ProcessorStatus, running_processor
from services.gateway.event_processor.settings import EventProcessorSettings, get_settings
from shared.breaker import get_breaker_registry
from shared.runner import freeze_startup_objects
from shared.service_app import create_service_app, include_routes, readiness_checks

# Young-generation threshold of the garbage collector in the processor's own process. Each
# batch holds tens of thousands of new container objects (records, messages, rows) that
# reference counting frees when the batch is done; at Python's default (700) they set off a
# collection every few hundred events, which scans them and, every tenth and hundredth time,
# the older generations too: measured, 2 to 3.7 us of the processor's 9 us of CPU per event.
# At 50,000 a collection runs only once that many objects outlive their batch (cyclic garbage
# included, so memory stays bounded); the processor's CPU per event fell by 1.5 to 2.4 us.
# A host of the processor (the gateway) keeps the services' policy.
GC_YOUNG_THRESHOLD = 50_000


def create_app(settings: EventProcessorSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Read the breaker file now, so a wrong value stops start-up with a message naming file and key.
    breakers = processor_breakers(get_breaker_registry(settings.circuit_breaker_config))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Again after the lifespan's start-up, with the processor's own threshold.
        freeze_startup_objects(GC_YOUNG_THRESHOLD)
        async with running_processor(
            settings, breakers[DATABASE], readiness_checks(app), consumer_check="kafka"
        ) as processor:
            app.state.processor = processor
            yield

    app = create_service_app(
        service="event_processor",
        version=__version__,
        settings=settings,
        lifespan=lifespan,
        description="Consumes access events from Kafka and stores each exactly once in PostgreSQL.",
    )
    include_routes(app, processor_tuning.router)

    @app.get("/status", tags=["status"], response_model=ProcessorStatus)
    async def status(processor: Processor) -> ProcessorStatus:
        """The consumer, the live tuning, and counts since start (stored, duplicates, dead letters)."""
        return processor.status()

    return app
