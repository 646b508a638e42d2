"""Bundled sample data (real handwritten digits)."""
