"""Self-monitoring of the fleet: the PerformanceMonitor, real-time tracking with alerts, the UI monitor.

What other packages may import is listed in `__all__`; the heavier parts (alert channels, the
tracker) are imported from their own modules so a service that only times operations does not
load them.
"""

from shared.performance.export import export_history_csv, export_history_json
from shared.performance.monitor import (
    HistoryEntry,
    PerformanceMonitor,
    ResourceSnapshot,
    get_performance_monitor,
)

__all__ = [
    "HistoryEntry",
    "PerformanceMonitor",
    "ResourceSnapshot",
    "export_history_csv",
    "export_history_json",
    "get_performance_monitor",
]
