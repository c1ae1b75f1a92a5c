"""Queries: the frozen model, the fluent builder, SQL parsing and validation."""
