"""Inference: prompts, generation with the KV cache, scoring, chat."""
