"""Operator tools that run outside the server: build weights, archive, serve, test helpers."""
