"""Benchmarks: each module measures one target and prints one JSON object (with its baseline)."""
