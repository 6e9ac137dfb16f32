"""The image index: build, save, memory-mapped load, exact top-k."""
