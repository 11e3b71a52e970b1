"""Broker adapters: one module per broker, each turning deliveries into Messages."""
