"""The notebook side: sessions that send query specifications and receive protected results."""
