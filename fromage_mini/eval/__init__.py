"""Evaluation protocols (pairs, VIST, VisDial)."""
