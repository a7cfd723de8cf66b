"""Operator tools that run outside the server, one sub-package per concern.

    build/    example weights and data, `make archive` (YAML -> .mar), the model store
    config/   model YAML and TorchServe properties, parsed and checked
    serve/    start, wait for READY and stop TorchServe (`make serve`, `make stop`)
    client/   HTTP, gRPC and metrics clients for a running TorchServe (no torch)
    operate/  tsctl: status, rollout behind a golden-set gate, rollback (no torch)
    measure/  bench, tune, bench-check, coldstart, memory
    harness   a handler run in-process through TorchServe's own Context (tests, gates, bench)
"""
