"""Handlers that run inside TorchServe workers.

`handlers.base.ModelHandler` owns TorchServe's lifecycle; each concrete module
(`tabular`, `digits`, `minilm`) defines exactly one handler class, as TorchServe
requires of the module named by `--handler`.
"""
