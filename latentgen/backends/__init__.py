"""latentgen.backends."""
