"""The optimizer loop: read settings and signals, decide, apply (or only recommend), report.

`start()` is the programmatic entry: inside a running event loop it returns a started
:class:`Optimizer`; `await optimizer.stop()` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import httpx
from prometheus_client import Counter, Gauge

from services.optimizer.controller import Controller, ControllerConfig, Decision, Knob
from services.optimizer.settings import OptimizerSettings, get_settings
from services.optimizer.signals import PrometheusReader, ScrapeReader, Signals
from services.optimizer.status import OptimizerStatus

log = logging.getLogger(__name__)

SETTING = Gauge("optimizer_setting", "Current value of each tuned setting", ["service", "setting"])
DECISIONS = Counter(
    "optimizer_decisions_total", "Decisions taken, by outcome", ["service", "setting", "outcome"]
)

# Processor values assumed when its /admin/tuning cannot be read (the gateway's defaults).
_PROCESSOR_FALLBACK = {"batch_size": (5_000, 1, 100_000), "flush_interval_ms": (50, 1, 10_000)}


class Optimizer:
    def __init__(self, settings: OptimizerSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.enabled = settings.optimizer_enabled
        self.urls = {
            "analytics": settings.analytics_url,
            "event_processor": settings.processor_url,
            "replicator": settings.replicator_url,
        }
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(settings.optimizer_request_timeout_s))
        self._own_http = http is None
        self.reader: ScrapeReader | PrometheusReader
        if settings.prometheus_url:
            self.reader = PrometheusReader(
                settings.prometheus_url,
                {name: name for name in self.urls},
                self.http,
                window_s=max(30.0, settings.optimizer_interval_s * 2),
            )
        else:
            self.reader = ScrapeReader(self.urls, self.http)
        self.controller = Controller(
            ControllerConfig(
                latency_target_s=settings.optimizer_latency_target_ms / 1000,
                cache_hit_target=settings.optimizer_cache_hit_target,
                cooldown_s=settings.optimizer_cooldown_s,
                confirmations=settings.optimizer_confirmations,
                replication_backlog_budget_s=settings.optimizer_replication_backlog_budget_s,
            )
        )
        self.knobs: dict[tuple[str, str], Knob] = {}
        self.settings_source: dict[str, str] = {}
        self.signals = Signals()
        self.decisions: deque[Decision] = deque(maxlen=100)
        self.cycles = 0
        self.last_cycle_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _headers(self) -> dict[str, str]:
        token = self.settings.admin_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def refresh_settings(self) -> None:
        """Current values and bounds from each service's GET /admin/tuning."""
        for service, url in self.urls.items():
            try:
                response = await self.http.get(url.rstrip("/") + "/admin/tuning", headers=self._headers())
                response.raise_for_status()
                self._merge(service, response.json())
                self.settings_source[service] = "GET /admin/tuning"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self.settings_source[service] = f"assumed defaults (GET /admin/tuning: {exc})"[:300]
                self._assume_defaults(service)

    def _knob(
        self,
        service: str,
        setting: str,
        value: float,
        low: float,
        high: float,
        *,
        default: float | None = None,
        integer: bool = True,
    ) -> None:
        """Creates or updates a knob; `default` is the service's configured value when it
        reports one (else the first value seen)."""
        knob = self.knobs.get((service, setting))
        if knob is None:
            self.knobs[(service, setting)] = Knob(
                service, setting, value, value if default is None else default, low, high, integer=integer
            )
            return
        knob.value = value
        knob.low, knob.high = low, high
        if default is not None:
            knob.default = default

    def _merge(self, service: str, body: dict[str, Any]) -> None:
        bounds = body.get("bounds", {})

        def limits(name: str, fallback: tuple[float, float]) -> tuple[float, float]:
            b = bounds.get(name)  # {"min", "max"}: the one shape of every /admin/tuning
            return fallback if b is None else (float(b["min"]), float(b["max"]))

        defaults = body.get("defaults", {})

        def default(name: str) -> float | None:
            value = defaults.get(name)
            return float(value) if isinstance(value, int | float) else None

        if service == "event_processor":
            for name in ("batch_size", "flush_interval_ms"):
                low, high = limits(name, _PROCESSOR_FALLBACK[name][1:])
                self._knob(service, name, float(body[name]), low, high, default=default(name))
        elif service == "replicator":
            low, high = limits("interval_seconds", (0.05, 3_600.0))
            self._knob(
                service,
                "interval_seconds",
                float(body["interval_seconds"]),
                low,
                high,
                default=default("interval_seconds"),
                integer=False,
            )
        else:
            low, high = limits("chunk_size", (1_000, 1_000_000))
            self._knob(
                service, "chunk_size", float(body["chunk_size"]), low, high, default=default("chunk_size")
            )
            low, high = limits("max_workers", (1, 32))
            self._knob(
                service, "max_workers", float(body["max_workers"]), low, high, default=default("max_workers")
            )
            low, high = limits("cache_ttl_seconds", (1, 86_400))
            ttl_defaults = defaults.get("cache_ttl_seconds", {})
            for cache, ttl in body.get("cache_ttl_seconds", {}).items():
                configured = ttl_defaults.get(cache) if isinstance(ttl_defaults, dict) else None
                self._knob(
                    service,
                    f"cache_ttl_seconds.{cache}",
                    float(ttl),
                    low,
                    min(high, self.settings.optimizer_cache_ttl_max_s),
                    default=float(configured) if isinstance(configured, int | float) else None,
                    integer=False,
                )

    def _assume_defaults(self, service: str) -> None:
        if any(k[0] == service for k in self.knobs):
            return  # keep what was last known
        if service == "replicator":
            return  # optional: a fleet without a replicator has nothing of it to tune
        if service == "event_processor":
            for name, (value, low, high) in _PROCESSOR_FALLBACK.items():
                self._knob(service, name, value, low, high)
        else:
            self._knob(service, "chunk_size", self.settings.analytics_chunk_size, 1_000, 1_000_000)
            self._knob(service, "max_workers", self.settings.analytics_max_workers, 1, 32)

    async def _apply(self, decision: Decision) -> None:
        knob = self.knobs[(decision.service, decision.setting)]
        knob.last_change = decision.at
        if not self.enabled:
            knob.recommended = decision.new
            DECISIONS.labels(decision.service, decision.setting, "recommended").inc()
            return
        if decision.setting.startswith("cache_ttl_seconds."):
            body: dict[str, Any] = {"cache_ttl_seconds": {decision.setting.split(".", 1)[1]: decision.new}}
        else:
            body = {decision.setting: int(decision.new) if knob.integer else decision.new}
        url = self.urls[decision.service].rstrip("/") + "/admin/tuning"
        try:
            response = await self.http.put(url, json=body, headers=self._headers())
            if response.status_code >= 400:
                raise RuntimeError(
                    f"PUT /admin/tuning answered {response.status_code}: {response.text[:200]}"
                )
        except (httpx.HTTPError, RuntimeError) as exc:
            decision.error = str(exc)
            DECISIONS.labels(decision.service, decision.setting, "failed").inc()
            return
        decision.applied = True
        knob.value = decision.new
        knob.recommended = None
        DECISIONS.labels(decision.service, decision.setting, "applied").inc()

    async def cycle(self) -> list[Decision]:
        """One evaluation: settings, signals, decisions (applied when enabled)."""
        await self.refresh_settings()
        self.signals = await self.reader.read()
        now = time.time()
        decisions = self.controller.decide(list(self.knobs.values()), self.signals, now)
        for decision in decisions:
            await self._apply(decision)
            self.decisions.append(decision)
            log.info(
                "optimizer %s %s.%s %s -> %s: %s",
                "applied" if decision.applied else ("failed" if decision.error else "recommends"),
                decision.service,
                decision.setting,
                decision.old,
                decision.new,
                decision.reason,
                extra={"decision": decision.as_dict()},
            )
        for knob in self.knobs.values():
            SETTING.labels(knob.service, knob.setting).set(knob.value)
        self.cycles += 1
        self.last_cycle_at = now
        return decisions

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.cycle()
            except Exception:  # one bad cycle must not end the optimizer
                log.exception("optimizer cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.optimizer_interval_s)

    def start(self) -> Optimizer:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="optimizer")
        return self

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout=10)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._own_http:
            await self.http.aclose()

    def status(self) -> OptimizerStatus:
        services: dict[str, Any] = {}
        for (service, setting), knob in sorted(self.knobs.items()):
            entry = services.setdefault(
                service,
                {"url": self.urls[service], "source": self.settings_source.get(service), "settings": {}},
            )
            entry["settings"][setting] = knob.as_dict()
        return OptimizerStatus.model_validate(
            {
                "enabled": self.enabled,
                "mode": "apply" if self.enabled else "recommend",
                "signal_source": "prometheus" if isinstance(self.reader, PrometheusReader) else "scrape",
                "interval_seconds": self.settings.optimizer_interval_s,
                "cooldown_seconds": self.controller.config.cooldown_s,
                "confirmations": self.controller.config.confirmations,
                "latency_target_ms": self.controller.config.latency_target_s * 1000,
                "cycles": self.cycles,
                "last_cycle_at": self.last_cycle_at,
                "services": services,
                "signals": self.signals.as_dict(),
                "decisions": [d.as_dict() for d in reversed(self.decisions)],
            }
        )


def start(settings: OptimizerSettings | None = None) -> Optimizer:
    """Start an optimizer in the running event loop (the programmatic entry)."""
    return Optimizer(settings or get_settings()).start()
