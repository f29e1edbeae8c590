"""one_to_all models."""
