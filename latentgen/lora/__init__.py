"""latentgen.lora."""
