"""Parametrised quality-assessment notebooks run with papermill, on demand or on a schedule."""
