"""Development-only helpers, shared by the tests, the benchmarks and `make run`.

Nothing deployed imports this package: `embedded` starts real PostgreSQL, Kafka-protocol and
Redis servers from Python packages, `servers` hands them to tests and benchmarks (from the
environment when set, else embedded), `fleet` runs service processes, `prometheus` runs a real
Prometheus against them.
"""
