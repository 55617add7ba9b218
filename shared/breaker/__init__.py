"""Circuit breakers: the public API. Callers import from here, never from the submodules.

`circuit` holds the state machine and the registry, `config` the YAML schema, `window` the
sliding windows, `classify` which outcomes count as failures, `metrics` the Prometheus series,
`errors` the rejection raised while open, `snapshot` the documented shape of a breaker's state.
"""

from shared.breaker.circuit import BreakerRegistry, CircuitBreaker, Permit, get_breaker_registry
from shared.breaker.classify import MESSAGE_CAUSED, is_server_fault
from shared.breaker.config import BreakerConfig, BreakerConfigError, Seconds
from shared.breaker.errors import CausedByInput, CircuitBreakerOpen, State
from shared.breaker.snapshot import BreakerBoard, BreakerSnapshot

__all__ = [
    "MESSAGE_CAUSED",
    "BreakerBoard",
    "BreakerConfig",
    "BreakerConfigError",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CausedByInput",
    "CircuitBreaker",
    "CircuitBreakerOpen",
    "Permit",
    "Seconds",
    "State",
    "get_breaker_registry",
    "is_server_fault",
]
