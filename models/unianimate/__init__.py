"""unianimate models."""
