"""Training the adapters: the loop, validation, schedule, distributed helpers."""
