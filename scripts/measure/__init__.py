"""`make bench`, `make tune`, `make bench-check`, `make coldstart`, `make memory`: measured side by side."""
