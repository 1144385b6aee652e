"""Renderers: values in, strings out. Only `cli` prints."""
