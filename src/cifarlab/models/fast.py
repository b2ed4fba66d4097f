"""Fast networks (filled in by the fast-training work)."""
