"""Helpers around the model: memory planning, GGUF conversion."""
