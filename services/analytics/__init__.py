"""Analytics: access-event analyses behind a multi-tier cache, CSV uploads, performance intake."""

__version__ = "0.1.0"
