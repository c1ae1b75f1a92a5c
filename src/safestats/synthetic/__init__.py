"""The synthetic school census: a seeded generator and the reference figures it draws from."""
