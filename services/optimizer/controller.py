"""The optimizer's controller: per-knob rules, AIMD and gradient style, damped three ways.

Stated policy (what each knob follows, and why):

- `event_processor.batch_size`: AIMD, as TCP and Netflix concurrency-limits' AIMD limit, with
  the configured size as its ceiling. The database absorbing batches slowly (store p95 over
  1 s) or memory pressure: halve. Batches leaving full below the configured size: add half of
  it back. Growing past the configured size was measured to buy nothing here (10,000 instead
  of 5,000 at ~23,000 events/s: throughput -2.5 %, event-to-stored p95 doubled), so the rule
  does not try.
- `event_processor.flush_interval_ms`: idle (no events in the window) → 500 ms, fewer empty
  polls; events flowing → back to the configured default at once (no confirmation, no
  cooldown: a return to the default that only waiting could make wrong).
- `analytics.max_workers`: a gradient on latency in the spirit of Gradient2 and Envoy's
  adaptive concurrency: p95 above target while the host has CPU headroom means requests queue
  for a worker → one more; the host CPU saturated while there are more workers than cores
  means workers contend → ×0.75 (never below the core count); p95 far under target above the
  default → one fewer.
- `analytics.chunk_size`: memory pressure → ×0.5; pressure gone → back to the configured
  size. Bigger chunks than configured were measured slower (400,000 rows instead of 50,000:
  uploads 2-4 % slower), so the rule never grows them.
- `analytics.cache_ttl_seconds.<cache>`: a cache looked up often whose hit ratio is below the
  target → TTL ×2 (repeated queries recompute what they just computed); uploads changing the
  data → back to the default TTL (freshness first).
- `replicator.interval_seconds`: background work yields to foreground work, as RocksDB's
  auto-tuned rate limiter holds compaction back while writes are heavy. Replication competes
  for the same CPU and primary database as the writes it copies (measured on 2 cores: uploads
  23 % and ingestion 4 % slower while it runs alongside). During a write burst (at least
  1,000 events/s or an upload running) on a working host (CPU at 50 % or more), the interval
  becomes half the backlog budget: the replica catches up in a few large batches instead of
  continuously. The moment the burst ends, the host has room again, or the backlog reaches
  half its budget, the default comes back at once (urgent), so the oldest unreplicated event
  stays within `OPTIMIZER_REPLICATION_BACKLOG_BUDGET`.

Damping, so it never oscillates: every value is clamped to the intersection of the
service's own bounds and the optimizer's; a rule must fire `confirmations` evaluations in a
row (hysteresis) and thresholds carry a dead band; a knob that changed is left alone for
`cooldown_s`, long enough to measure the effect of the change before the next one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.optimizer.signals import SignalMap, Signals

STORE_P95_LIMIT_S = 1.0
MEMORY_HIGH = 0.8
MEMORY_HEADROOM = 0.5
CPU_HIGH = 0.9
CPU_HEADROOM = 0.7
# A write burst worth deferring replication for, and a host that is doing real work. Measured
# on 2 cores: replication running alongside cost uploads 23 % and ingestion 4 % of their
# throughput at only 70-77 % host CPU; the contention is in the primary database (WAL,
# buffers) as much as on the CPU, so the CPU bar is low.
WRITE_BURST_EVENTS_S = 1_000.0
HOST_WORKING = 0.5
IDLE_FLUSH_INTERVAL_MS = 500
DEAD_BAND = 0.1


@dataclass
class Knob:
    service: str
    setting: str
    value: float
    default: float
    low: float
    high: float
    integer: bool = True
    last_change: float | None = None
    streak: tuple[str, int] | None = None  # (rule that fired, consecutive evaluations)
    recommended: float | None = None

    def clamp(self, value: float) -> float:
        value = min(self.high, max(self.low, value))
        return float(math.floor(value)) if self.integer else round(value, 3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": _num(self.value),
            "default": _num(self.default),
            "bounds": {"min": _num(self.low), "max": _num(self.high)},
            "recommended": _num(self.recommended) if self.recommended is not None else None,
            "last_change": self.last_change,
        }


def _num(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True)
class Proposal:
    value: float
    rule: str
    reason: str
    # A return to the configured default that must not wait: skips confirmations and cooldown.
    urgent: bool = False


@dataclass
class Decision:
    at: float
    service: str
    setting: str
    old: float
    new: float
    rule: str
    reason: str
    signals: dict[str, float | None]
    applied: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "service": self.service,
            "setting": self.setting,
            "old": _num(self.old),
            "new": _num(self.new),
            "rule": self.rule,
            "reason": self.reason,
            "signals": {k: (round(v, 4) if v is not None else None) for k, v in self.signals.items()},
            "applied": self.applied,
            "error": self.error,
        }


@dataclass
class ControllerConfig:
    latency_target_s: float = 0.5
    cache_hit_target: float = 0.8
    cooldown_s: float = 30.0
    confirmations: int = 2
    replication_backlog_budget_s: float = 60.0


Rule = Callable[[Knob, SignalMap, SignalMap, ControllerConfig], Proposal | None]


def _batch_size(knob: Knob, s: SignalMap, host: SignalMap, cfg: ControllerConfig) -> Proposal | None:
    store_p95, mean, rate = s.get("store_p95_s"), s.get("batch_mean_records"), s.get("events_rate")
    memory = s.get("memory_ratio") or host.get("memory_ratio") or 0.0
    if (store_p95 is not None and store_p95 > STORE_P95_LIMIT_S) or memory >= MEMORY_HIGH:
        return Proposal(
            knob.value * 0.5,
            "md",
            f"store p95 {store_p95 or 0:.2f}s (limit {STORE_P95_LIMIT_S}s) or memory {memory:.0%}: halve",
        )
    if mean is None or not rate or knob.value >= knob.default:
        return None
    fill = mean / knob.value
    if fill >= 0.9:
        return Proposal(
            min(knob.default, knob.value + knob.default * 0.5),
            "ai",
            f"batches leave {fill:.0%} full at {rate:.0f} events/s and the store is fast again: "
            "grow back towards the configured size",
        )
    return None


def _flush_interval(knob: Knob, s: SignalMap, host: SignalMap, cfg: ControllerConfig) -> Proposal | None:
    rate = s.get("events_rate")
    if rate is None:
        return None
    if rate == 0 and knob.value < IDLE_FLUSH_INTERVAL_MS:
        return Proposal(IDLE_FLUSH_INTERVAL_MS, "idle", "no events in the window: poll less often")
    if rate > 0 and knob.value > knob.default:
        # Urgent: every batch of a new burst would otherwise wait the idle interval until
        # confirmations and cooldown pass (measured: +0.5 s event latency for that long).
        return Proposal(
            knob.default, "busy", f"{rate:.0f} events/s: back to the default interval", urgent=True
        )
    return None


def _max_workers(knob: Knob, s: SignalMap, host: SignalMap, cfg: ControllerConfig) -> Proposal | None:
    cpu, p95, rate = host.get("cpu_ratio"), s.get("latency_p95_s"), s.get("request_rate")
    cores = host.get("cpu_cores")
    # Only workers beyond the cores contend with each other. A busy host with workers <= cores
    # is busy with something else (another service, another tenant): fewer workers would only
    # slow analytics down (measured: the cut fired on a neighbour's load before analytics had
    # any work of its own).
    if cpu is not None and cpu >= CPU_HIGH and cores is not None and knob.value > max(knob.low, cores):
        return Proposal(
            max(cores, min(knob.value - 1, math.floor(knob.value * 0.75))),
            "md",
            f"host CPU {cpu:.0%} (>= {CPU_HIGH:.0%}) with {knob.value:.0f} workers on "
            f"{cores:.0f} cores: fewer workers contend less",
        )
    if p95 is None or not rate or cpu is None:
        return None
    target = cfg.latency_target_s
    if p95 > target * (1 + DEAD_BAND) and cpu < CPU_HEADROOM:
        return Proposal(
            knob.value + 1,
            "ai",
            f"p95 {p95 * 1000:.0f} ms over the {target * 1000:.0f} ms target "
            f"with CPU at {cpu:.0%}: add a worker",
        )
    if p95 < target * 0.5 and knob.value > knob.default:
        return Proposal(
            knob.value - 1, "decay", f"p95 {p95 * 1000:.0f} ms, far under target: release a worker"
        )
    return None


def _chunk_size(knob: Knob, s: SignalMap, host: SignalMap, cfg: ControllerConfig) -> Proposal | None:
    memory = s.get("memory_ratio") or host.get("memory_ratio")
    if memory is None:
        return None
    if memory >= MEMORY_HIGH:
        return Proposal(knob.value * 0.5, "md", f"memory at {memory:.0%}: smaller chunks")
    if memory < MEMORY_HEADROOM and knob.value < knob.default:
        return Proposal(knob.default, "reset", f"memory at {memory:.0%}: back to the configured chunk size")
    return None


def _cache_ttl(knob: Knob, s: SignalMap, host: SignalMap, cfg: ControllerConfig) -> Proposal | None:
    cache = knob.setting.split(".", 1)[1]
    lookups, ratio = s.get(f"cache_lookup_rate:{cache}"), s.get(f"cache_hit_ratio:{cache}")
    uploads = s.get("upload_rate") or 0.0
    if uploads > 0 and knob.value > knob.default:
        return Proposal(knob.default, "reset", f"{uploads:.2f} uploads/s change the data: default freshness")
    if lookups is None or ratio is None:
        return None
    if lookups >= 0.5 and ratio < cfg.cache_hit_target * (1 - DEAD_BAND) and uploads == 0:
        return Proposal(
            knob.value * 2,
            "mi",
            f"{lookups:.1f} lookups/s hit only {ratio:.0%} "
            f"(target {cfg.cache_hit_target:.0%}): keep results longer",
        )
    return None


def _replication_interval(
    knob: Knob, s: SignalMap, host: SignalMap, cfg: ControllerConfig
) -> Proposal | None:
    backlog, cpu = s.get("backlog_seconds"), host.get("cpu_ratio")
    if backlog is None or cpu is None:
        return None
    budget = cfg.replication_backlog_budget_s
    events = host.get("fleet.events_rate") or 0.0
    uploads = max(host.get("fleet.uploads_in_progress") or 0.0, host.get("fleet.upload_rate") or 0.0)
    burst = events >= WRITE_BURST_EVENTS_S or uploads > 0
    if burst and cpu >= HOST_WORKING and backlog < budget * 0.5:
        deferred = budget * 0.5
        if knob.value >= deferred:
            return None
        return Proposal(
            deferred,
            "defer",
            f"{events:.0f} events/s and {uploads:g} uploads with host CPU at {cpu:.0%}: replication "
            f"yields to them (backlog {backlog:.1f}s of a {budget:.0f}s budget)",
        )
    if knob.value > knob.default:
        # Resume thresholds sit below the defer ones (hysteresis): a rate hovering at a
        # threshold does not flip replication on and off.
        if backlog >= budget * 0.5:
            why = f"backlog {backlog:.1f}s reached half its {budget:.0f}s budget"
        elif events < WRITE_BURST_EVENTS_S * 0.5 and uploads == 0:
            why = f"the write burst ended ({events:.0f} events/s, no uploads)"
        elif cpu < HOST_WORKING * 0.6:
            why = f"host CPU at {cpu:.0%} has room"
        else:
            return None
        return Proposal(knob.default, "resume", f"{why}: replicate at the default interval", urgent=True)
    return None


def rule_for(knob: Knob) -> Rule | None:
    if knob.service == "event_processor":
        return {"batch_size": _batch_size, "flush_interval_ms": _flush_interval}.get(knob.setting)
    if knob.service == "replicator":
        return _replication_interval if knob.setting == "interval_seconds" else None
    if knob.service == "analytics":
        if knob.setting.startswith("cache_ttl_seconds."):
            return _cache_ttl
        return {"max_workers": _max_workers, "chunk_size": _chunk_size}.get(knob.setting)
    return None


@dataclass
class Controller:
    config: ControllerConfig = field(default_factory=ControllerConfig)

    def decide(self, knobs: list[Knob], signals: Signals, now: float) -> list[Decision]:
        decisions = []
        # Rules see the host and the fleet's write rates: one service's knob may depend on the
        # load another carries (replication yields to ingestion and uploads).
        host = {
            **signals.host,
            "fleet.events_rate": signals.services.get("event_processor", {}).get("events_rate"),
            "fleet.upload_rate": signals.services.get("analytics", {}).get("upload_rate"),
            "fleet.uploads_in_progress": signals.services.get("analytics", {}).get("uploads_in_progress"),
        }
        for knob in knobs:
            rule = rule_for(knob)
            service_signals = signals.services.get(knob.service)
            if rule is None or service_signals is None:
                knob.streak = None
                continue
            proposal = rule(knob, service_signals, host, self.config)
            new = knob.clamp(proposal.value) if proposal else knob.value
            if proposal is None or new == knob.value:
                knob.streak = None
                continue
            count = knob.streak[1] + 1 if knob.streak and knob.streak[0] == proposal.rule else 1
            knob.streak = (proposal.rule, count)
            if not proposal.urgent:
                if count < self.config.confirmations:
                    continue
                if knob.last_change is not None and now - knob.last_change < self.config.cooldown_s:
                    continue
            knob.streak = None
            used = {**service_signals, **{f"host.{k}": v for k, v in host.items()}}
            decisions.append(
                Decision(
                    now, knob.service, knob.setting, knob.value, new, proposal.rule, proposal.reason, used
                )
            )
        return decisions
