"""latentgen.text."""
