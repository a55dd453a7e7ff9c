"""Mesh construction and the one table of sharding rules."""
