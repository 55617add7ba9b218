"""Circuit breakers: the public API. Callers import from here, never from the submodules.

`circuit` holds the state machine and the registry, `config` the YAML schema, `window` the
sliding windows, `classify` which outcomes count as failures, `metrics` the Prometheus series,
`errors` the rejection raised while open, `snapshot` the documented shape of a breaker's state.
"""

from shared.breaker.circuit import BreakerRegistry, CircuitBreaker, Permit, get_breaker_registry
from shared.breaker.config import BreakerConfig, BreakerConfigError, Seconds
from shared.breaker.errors import CircuitBreakerOpen, State
from shared.breaker.snapshot import BreakerSnapshot

__all__ = [
    "BreakerConfig",
    "BreakerConfigError",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitBreakerOpen",
    "Permit",
    "Seconds",
    "State",
    "get_breaker_registry",
]
