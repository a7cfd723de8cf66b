"""Configuration files: one YAML per model (checked before anything is written) and TorchServe properties."""
