"""wan models."""
