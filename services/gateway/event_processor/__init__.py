"""The event processor: consumes access events from Kafka and stores each exactly once."""
