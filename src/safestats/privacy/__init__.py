"""Differential privacy: OpenDP behind a narrow API, and the persistent budget ledger."""
