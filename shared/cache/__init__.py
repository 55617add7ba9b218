"""The fleet cache: three tiers (memory, Redis, disk), stampede-proof, invalidated by tag.

Usage::

    @cache_with_lock(ttl_seconds=600, tags=lambda flt: ("events",))
    async def get_unique_patterns_analysis(flt: EventFilter) -> dict: ...

    manager = get_cache_manager(settings)   # by CACHE_TYPE
    await manager.start()
    await manager.invalidate_tags(["events"])
    await manager.report()
"""

from shared.cache.decorator import cache_with_lock, last_cache_result, registered_functions
from shared.cache.entry import CacheEntry
from shared.cache.keys import canonical, make_key
from shared.cache.manager import (
    CacheResult,
    HierarchicalCacheManager,
    IntelligentMultiLevelCache,
    MemoryCacheManager,
    RedisCacheManager,
    build_cache_manager,
    get_cache_manager,
    set_cache_manager,
)
from shared.cache.tiers import DiskTier, MemoryTier, RedisTier, TierUnavailable
from shared.cache.warmer import IntelligentCacheWarmer
from shared.cache.xfetch import should_refresh_early

__all__ = [
    "CacheEntry",
    "CacheResult",
    "DiskTier",
    "HierarchicalCacheManager",
    "IntelligentCacheWarmer",
    "IntelligentMultiLevelCache",
    "MemoryCacheManager",
    "MemoryTier",
    "RedisCacheManager",
    "RedisTier",
    "TierUnavailable",
    "build_cache_manager",
    "cache_with_lock",
    "canonical",
    "get_cache_manager",
    "last_cache_result",
    "make_key",
    "registered_functions",
    "set_cache_manager",
    "should_refresh_early",
]
