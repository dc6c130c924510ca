"""latentgen.training."""
