"""animatediff models."""
