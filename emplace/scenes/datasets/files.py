"""How a camera is written into the data sets' records, and read back."""

from __future__ import annotations

from ..world import Camera

CAMERA_FIELDS = ("height", "pitch", "yaw", "focal", "target")


def camera_record(camera) -> dict:
    return {"height": camera.height, "pitch": camera.pitch, "yaw": camera.yaw, "focal": camera.focal,
            "target": list(camera.target)}


def camera_from_record(record: dict, what: str = "camera") -> Camera:
    """The Camera a `camera_record` describes; a missing or malformed field is named in the error."""
    if not isinstance(record, dict):
        raise ValueError(f"{what}: expected an object with {', '.join(CAMERA_FIELDS)}, got {record!r}")
    missing = [k for k in CAMERA_FIELDS if k not in record]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)} (a camera record has {', '.join(CAMERA_FIELDS)})")
    try:
        target = tuple(float(v) for v in record["target"])
        if len(target) != 2:
            raise ValueError
        return Camera(height=float(record["height"]), pitch=float(record["pitch"]), yaw=float(record["yaw"]),
                      focal=float(record["focal"]), target=target)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: height, pitch, yaw and focal must be numbers and target two numbers, "
                         f"got {record!r}") from None
