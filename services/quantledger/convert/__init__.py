"""Hugging Face safetensors folders to GGUF, without torch."""
