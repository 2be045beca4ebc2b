"""Quality of a quantized model measured against its unquantized reference."""
