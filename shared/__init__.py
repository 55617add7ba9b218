"""The fleet's common library: settings, logging, tracing, app factory, event model, DB and Kafka helpers.

Services import `shared`, never each other.
"""
