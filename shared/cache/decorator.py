"""`cache_with_lock`: cache a function's results in the fleet cache, computing each key once."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from shared.cache.keys import make_key
from shared.cache.manager import CacheResult, HierarchicalCacheManager, get_cache_manager

__all__ = ["cache_with_lock", "last_cache_result", "registered_functions"]

F = TypeVar("F", bound=Callable[..., Any])

# The outcome of the latest cached call in this context, for callers that report it (the
# analytics routes turn it into `X-Cache` and `Age` headers).
last_cache_result: contextvars.ContextVar[CacheResult | None] = contextvars.ContextVar(
    "last_cache_result", default=None
)

_REGISTRY: dict[str, Callable[..., Any]] = {}


def registered_functions() -> dict[str, Callable[..., Any]]:
    """Cache name → decorated function, for the warmer."""
    return dict(_REGISTRY)


def cache_with_lock(
    ttl_seconds: float,
    *,
    name: str | None = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] = (),
    exclude: Iterable[str] = ("self", "cls"),
    manager: HierarchicalCacheManager | Callable[[], HierarchicalCacheManager] | None = None,
) -> Callable[[F], F]:
    """Cache the decorated function (async or sync) for `ttl_seconds`.

    The key is the cache `name` (default: the function's qualified name) and a stable hash of
    its bound arguments, minus `exclude` (e.g. `self`). The manager is `manager`, else the
    `cache_manager` attribute of the first argument (a method's `self`), else the process-wide
    `get_cache_manager()`. `tags` is a list, or a function of the
    bound arguments returning one; invalidating a tag invalidates every entry carrying it.
    Concurrent callers of a cold key wait for one computation (one per fleet with Redis).
    """
    excluded = frozenset(exclude)

    def decorate(fn: F) -> F:
        cache_name = name or f"{fn.__module__}.{fn.__qualname__}"
        signature = inspect.signature(fn)

        def resolve(args: tuple[Any, ...]) -> HierarchicalCacheManager:
            if manager is None:
                # A method of an object that owns a manager (`self.cache_manager`) uses it, so
                # two apps in one process (tests) never share cached values.
                own = getattr(args[0], "cache_manager", None) if args else None
                return own if isinstance(own, HierarchicalCacheManager) else get_cache_manager()
            if isinstance(manager, HierarchicalCacheManager):
                return manager
            return manager()

        def prepare(
            args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[str, tuple[str, ...], dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in bound.arguments.items() if k not in excluded}
            key = make_key(cache_name, (), arguments)
            entry_tags = tuple(tags(**arguments) if callable(tags) else tags)
            return key, entry_tags, arguments

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                mgr = resolve(args)
                key, entry_tags, arguments = prepare(args, kwargs)
                result = await mgr.get_or_compute(
                    cache_name,
                    key,
                    lambda: fn(*args, **kwargs),
                    ttl_s=mgr.ttl_for(cache_name, ttl_seconds),
                    tags=entry_tags,
                    call_spec=(cache_name, (), arguments),
                )
                last_cache_result.set(result)
                return result.value

            wrapper: Callable[..., Any] = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                mgr = resolve(args)
                key, entry_tags, arguments = prepare(args, kwargs)
                result = mgr.run_sync(
                    lambda: mgr.get_or_compute(
                        cache_name,
                        key,
                        lambda: asyncio.to_thread(fn, *args, **kwargs),
                        ttl_s=mgr.ttl_for(cache_name, ttl_seconds),
                        tags=entry_tags,
                        call_spec=(cache_name, (), arguments),
                    )
                )
                last_cache_result.set(result)
                return result.value

            wrapper = sync_wrapper

        def cache_key(*args: Any, **kwargs: Any) -> str:
            return prepare(args, kwargs)[0]

        wrapper.cache_name = cache_name  # type: ignore[attr-defined]
        wrapper.cache_key = cache_key  # type: ignore[attr-defined]
        _REGISTRY[cache_name] = wrapper
        return cast(F, wrapper)

    return decorate
