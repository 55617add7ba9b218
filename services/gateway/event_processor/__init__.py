"""The event processor: consumes access events from Kafka and stores each exactly once.

A deployable of its own, kept beside the gateway that also hosts it. It imports only this
folder and `shared` (tests/unit/ops/test_import_boundaries.py holds it to that).
"""

__version__ = "0.1.0"
