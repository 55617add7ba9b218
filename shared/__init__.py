"""The fleet's common library: only what at least two deployed services use.

What belongs here: the settings base, JSON logging, tracing, the app factory and its pieces
(health, ready, errors), the event model (the one definition of the wire format), database and
Kafka helpers, the circuit breaker, the cache and the performance monitor. What does not: any
one service's domain logic (it lives with that service under `services/`) and development-only
helpers (embedded servers, test fleet helpers: `tools/dev/`).

Services import `shared`, never each other; `shared` imports no service.
"""
