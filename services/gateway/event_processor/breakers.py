"""The circuit breakers the event processor uses.

The processor guards one dependency, the database it stores into. Its breaker comes from the
fleet's breaker file (`CIRCUIT_BREAKER_CONFIG`) under the name `database`; inside the gateway
the same process-wide registry hands the gateway and the processor the same breaker object.
Like every service, the processor lists the breakers it called through at `GET /breakers`.
"""

from __future__ import annotations

from shared.breaker import BreakerRegistry, CircuitBreaker

DATABASE = "database"


def processor_breakers(registry: BreakerRegistry) -> dict[str, CircuitBreaker]:
    """The processor's breakers by name."""
    return {DATABASE: registry.get(DATABASE)}
