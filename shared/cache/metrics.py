"""Prometheus metrics of the cache (names fixed in docs/reference.md, "Metrics")."""

from __future__ import annotations

from prometheus_client import Counter

CACHE_HITS = Counter("cache_hits_total", "Cache hits by tier", ["cache", "tier"])
CACHE_MISSES = Counter("cache_misses_total", "Cache misses by tier", ["cache", "tier"])
CACHE_COMPUTATIONS = Counter("cache_computations_total", "Times the cached function itself ran", ["cache"])
CACHE_STALE_SERVED = Counter(
    "cache_stale_served_total", "Stale values served because recomputation failed", ["cache"]
)
CACHE_EARLY_REFRESHES = Counter(
    "cache_early_refreshes_total", "Recomputations started early by XFetch", ["cache"]
)
CACHE_TIER_ERRORS = Counter(
    "cache_tier_errors_total", "Failed tier operations (served by other tiers)", ["tier"]
)
CACHE_INVALIDATIONS = Counter("cache_invalidations_total", "Invalidations applied", ["kind"])
