"""The shapes of the analytics answers, as documented in `/openapi.json` and checked on the way out.

The analyses build plain dicts (they run in worker processes and are cached in Redis and on
disk as JSON); the routes validate them against these models, so a change in an analysis that
breaks the documented shape fails its tests instead of surprising a client.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """Answers may gain fields without breaking clients: extra keys pass through."""

    model_config = ConfigDict(extra="allow")


class AppliedFilters(_Open):
    start: str | None = None
    end: str | None = None
    facility_id: str | None = None


# --- patterns ---------------------------------------------------------------------------------


class DateRange(BaseModel):
    start: str | None
    end: str | None
    span_days: float


class DataSummary(BaseModel):
    total_records: int
    unique_users: int
    unique_doors: int
    unique_pairs: int
    date_range: DateRange


class Thresholds(BaseModel):
    p20: float | None
    p80: float | None


class RankedGroup(BaseModel):
    count: int
    events: int
    top: list[dict[str, str | int]] = Field(description="the busiest members: id and events")


class UserPatterns(BaseModel):
    thresholds: Thresholds
    power_users: RankedGroup = Field(description="above the 80th percentile of events per person")
    regular_users: RankedGroup
    occasional_users: RankedGroup = Field(description="below the 20th percentile")


class DoorDenialRate(BaseModel):
    door_id: str
    events: int
    denied: int
    denial_rate: float


class NeverDenied(BaseModel):
    count: int
    doors: list[str] = Field(description="the first 100, sorted")


class DevicePatterns(BaseModel):
    thresholds: Thresholds
    high_traffic: RankedGroup
    moderate_traffic: RankedGroup
    low_traffic: RankedGroup
    highest_denial_rates: list[DoorDenialRate]
    never_denied: NeverDenied


class PairCount(BaseModel):
    person_id: str
    door_id: str
    events: int


class InteractionPatterns(BaseModel):
    unique_pairs: int
    average_doors_per_user: float
    top_pairs: list[PairCount]


class OutsideWorkingHours(BaseModel):
    events: int
    share: float
    working_hours: str


class TemporalPatterns(BaseModel):
    by_hour: dict[str, int] = Field(description='events per UTC hour, "0" to "23"')
    by_weekday: dict[str, int]
    peak_hour: int | None
    peak_hour_events: int
    outside_working_hours: OutsideWorkingHours


class AccessPatterns(BaseModel):
    success_rate: float | None
    by_result: dict[str, int]
    by_badge_status: dict[str, int]
    granted_with_expired_or_suspended_badge: int


class Recommendation(_Open):
    rule: str
    severity: str
    recommendation: str
    reason: str
    evidence: dict[str, Any]


class PatternsAnalysis(BaseModel):
    """`GET /api/v1/analytics/patterns`: the unique-patterns analysis."""

    data_summary: DataSummary
    user_patterns: UserPatterns
    device_patterns: DevicePatterns
    interaction_patterns: InteractionPatterns
    temporal_patterns: TemporalPatterns
    access_patterns: AccessPatterns
    recommendations: list[Recommendation]
    filters: AppliedFilters | None = None


# --- summary ----------------------------------------------------------------------------------


class DoorCount(BaseModel):
    door_id: str
    events: int
    denied: int


class AccessSummary(BaseModel):
    """`GET /api/v1/analytics/summary`."""

    total_events: int
    granted: int
    denied: int
    timeout: int
    error: int
    success_rate: float | None = Field(description="granted / total; null when there are no events")
    unique_people: int
    unique_doors: int
    first_event: str | None
    last_event: str | None
    by_hour: dict[str, int] = Field(description='events per UTC hour, "0" to "23"')
    top_doors: list[DoorCount]
    filters: AppliedFilters


# --- anomalies --------------------------------------------------------------------------------


class Anomaly(_Open):
    type: str = Field(description="denial_burst, unusual_hour, invalid_badge_granted, door_held_open, ...")
    severity: str
    person_id: str | None = None
    door_id: str | None = None
    time: str | None
    description: str
    evidence: dict[str, Any]


class AnomalyReport(BaseModel):
    """`GET /api/v1/analytics/anomalies`."""

    total: int
    counts: dict[str, int] = Field(description="findings per type, before the limit")
    truncated: dict[str, bool] = Field(description="types with more findings than `limit`")
    anomalies: list[Anomaly]
    parameters: dict[str, float | int]
    filters: AppliedFilters


# --- cache ------------------------------------------------------------------------------------


class CacheInvalidated(BaseModel):
    tags: list[str]
    prefix: str | None


class InvalidationResult(BaseModel):
    invalidated: CacheInvalidated


# --- performance ------------------------------------------------------------------------------


class OperationStats(_Open):
    count: int
    mean: float | None
    min: float | None
    max: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    unit: str


class Resources(_Open):
    timestamp: str
    rss_bytes: int
    cpu_percent: float
    system_cpu_percent: float
    system_memory_percent: float
    num_threads: int
    open_fds: int


class PerformanceSummary(BaseModel):
    """`GET /api/v1/performance/summary`: the monitor's summary."""

    started_at: str = Field(description="ISO 8601 time the monitor started")
    operations: dict[str, OperationStats] = Field(description="per operation, since start")
    resources: Resources = Field(description="the latest resource sample")
    snapshot_interval_s: float
    history_length: int


class HistoryPoint(Resources):
    """One background snapshot: the resources then, and each operation that ran since the previous one."""

    interval_s: float = Field(description="seconds since the previous snapshot")
    operations: dict[str, OperationStats] = Field(description="per operation, over this interval only")


class PerformanceHistory(BaseModel):
    """`GET /api/v1/performance/history` (JSON): the snapshots kept, oldest first."""

    snapshot_interval_s: float
    history_size: int = Field(description="how many snapshots are kept at most")
    history: list[HistoryPoint]


class VitalRating(BaseModel):
    name: str
    rating: str = Field(description="good, needs-improvement or poor (web.dev boundaries)")


class VitalsAccepted(BaseModel):
    accepted: int
    ratings: list[VitalRating]


class VitalSummary(BaseModel):
    p75: float
    rating: str
    samples: int


class UiAccepted(BaseModel):
    accepted: int
    frames: int
    callbacks: int


class UiMetrics(BaseModel):
    """Recent frame times and callback durations with totals since start."""

    frames: dict[str, Any] = Field(description="total, recent (count, mean, p95, ...), fps_estimate, jank")
    callbacks: dict[str, Any] = Field(description="total, and recent statistics per callback name")


class ThresholdState(_Open):
    metric: str
    statistic: str
    comparison: str
    threshold: float
    unit: str
    enabled: bool
    failing: bool
    notified: bool
    value: float | None
    samples: int
    since: str | None = Field(description="ISO 8601 time the threshold began failing")


class AlertsView(BaseModel):
    alerts: list[dict[str, Any]] = Field(description="the most recent alerts, newest first")
    thresholds: list[ThresholdState]
    channels: list[str]


class TierReport(_Open):
    entries: int | None = Field(description="null when the tier does not answer")
    hits: int
    misses: int
    evictions: int
    promotions: int
    errors: int
    available: bool
    max_entries: int | None = None


class CacheStats(_Open):
    hits: dict[str, int] = Field(description="per tier")
    misses: dict[str, int]
    computations: int = Field(description="times the cached function itself ran")
    stale_served: int
    early_refreshes: int
    errors: int
    ttl_seconds: float | None


class InvalidationSummary(_Open):
    tags: int = Field(description="tags with a recorded invalidation")
    prefixes: int = Field(description="key prefixes with a recorded invalidation")
    max_fields: int = Field(description="the most tags and prefixes remembered")
    floor: float = Field(description="Unix time before which every entry counts as invalidated")
    latest: dict[str, float] = Field(description='the latest invalidations, "tag:<t>" or "prefix:<p>"')


class CacheReport(BaseModel):
    """`GET /api/v1/cache/report`."""

    type: str
    tiers: dict[str, TierReport] = Field(description="l1 (memory), l2 (Redis), l3 (disk) when configured")
    caches: dict[str, CacheStats]
    invalidations: InvalidationSummary


# --- uploads ----------------------------------------------------------------------------------


class RowError(_Open):
    line: int = Field(description="line of the file on which the bad record starts; the header is line 1")
    reason: str


class UploadReport(BaseModel):
    """`POST /api/v1/uploads`: what happened to each row of the file."""

    upload_id: str
    rows_inserted: int = Field(description="rows newly stored (a re-upload of the same file inserts 0)")
    rows_rejected: int
    errors: list[RowError] = Field(description="the first rejected rows with their reasons")
    errors_truncated: bool
    rows_per_second: float
    rows_duplicate: int = Field(description="rows already stored (same event id)")
    chunks: int
    seconds: float
