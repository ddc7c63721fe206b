"""Builders of tiny seeded models for tests and benchmarks (as diffusers.utils.testing_utils is for diffusers).

Library-side only: diffusers and transformers models, imported where they are built; nothing here
imports comfy (ComfyUI-side test models live in tests/comfy/).
"""
