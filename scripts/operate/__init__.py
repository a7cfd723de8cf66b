"""`tsctl`: operate a running TorchServe (status, versions, rollout behind a gate, rollback).

Nothing here imports torch: a test checks it.
"""
