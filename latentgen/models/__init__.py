"""latentgen.models."""
