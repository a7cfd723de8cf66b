"""`make serve` / `make stop`: start TorchServe, wait until every model is READY, stop it."""
