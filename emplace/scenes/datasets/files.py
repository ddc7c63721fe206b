"""How a camera is written into the data sets' records."""

from __future__ import annotations


def camera_record(camera) -> dict:
    return {"height": camera.height, "pitch": camera.pitch, "yaw": camera.yaw, "focal": camera.focal,
            "target": list(camera.target)}
