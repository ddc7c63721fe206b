"""Preference data and losses (Diffusion-DPO family)."""
