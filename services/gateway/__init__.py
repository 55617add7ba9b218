"""Gateway: the fleet's front door (proxy, event ingestion, breakers) and host of the event processor."""

__version__ = "0.1.0"
