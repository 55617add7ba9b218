"""Development-only helpers, shared by the tests, the benchmarks and `make run`.

Nothing deployed imports this package (a test holds the fleet to that) and it never ships in
the package: `embedded` starts real PostgreSQL, Kafka-protocol and Redis servers from Python
packages, `object_store` keeps the embedded broker's log on disk, `servers` hands the servers to
tests and benchmarks (from the environment when set, else embedded), `fleet` runs service
processes, `prometheus` runs a real Prometheus against them, and `run_fleet` is `make run`.
"""
