"""Emplace: put objects where they belong. The library never imports ComfyUI."""

__version__ = "0.2.0"
