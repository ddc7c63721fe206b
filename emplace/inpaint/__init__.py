"""Iterative per-object inpainting (IterInpaint): the plan, and cropping and stitching each step."""
