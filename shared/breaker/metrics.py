"""Breaker metrics (names fixed in docs/reference.md, "Metrics"), shared by every breaker of a process."""

from prometheus_client import Counter, Gauge

STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

TRANSITIONS = Counter(
    "circuit_breaker_state_transitions_total", "Transitions of a breaker into a state", ["name", "state"]
)
STATE = Gauge("circuit_breaker_state", "Current state: 0 closed, 1 half_open, 2 open", ["name"])
CALLS = Counter(
    "circuit_breaker_calls_total",
    "Calls through a breaker by outcome (success, failure, slow, rejected, ignored)",
    ["name", "outcome"],
)
