"""Replicator: copies access events from PostgreSQL to TimescaleDB and reports its lag."""

__version__ = "0.1.0"
