"""`make models` and `make archive`: example weights, held-out data, .mar archives and the model store."""
