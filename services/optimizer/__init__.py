"""Optimizer: watches the fleet's metrics and resources and tunes the other services."""

__version__ = "0.1.0"
