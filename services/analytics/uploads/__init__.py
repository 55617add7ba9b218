"""File processing for analytics: streaming CSV uploads of access events."""
