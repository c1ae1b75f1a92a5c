"""Disclosure control: the protect step and its rules."""
