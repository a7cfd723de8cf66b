"""Comparison points for `make bench`: what people usually write instead of our handlers."""
