"""The tamper-evident audit log and its reports."""
