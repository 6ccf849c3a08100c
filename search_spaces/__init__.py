"""Shipped search spaces (YAML); see README for the format."""
