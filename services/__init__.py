"""The fleet's services: gateway (with the event processor), analytics, optimizer, replicator."""
