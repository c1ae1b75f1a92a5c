"""The service's own database: users and tokens, and the versioned schema migrations."""
