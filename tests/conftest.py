"""Shared by both tiers: tests build their own tiny models and data; nothing is downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")


def pytest_configure(config):
    # `pytest -m "not slow"` is the quick loop (under 3 minutes here); .ci/run runs everything
    config.addinivalue_line("markers", "slow: a whole training run or a long end-to-end run (seconds to minutes)")
