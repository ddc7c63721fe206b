"""Emplace's sidecar trainer: `python -m trainer <command>`."""
