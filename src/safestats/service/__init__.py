"""The service: the pipeline every request goes through, whatever the transport."""
