"""Clients for a running TorchServe: REST (inference, management), gRPC and Prometheus metrics.

Nothing here imports torch: operator tools start fast.
"""
