"""The scene world's closed vocabulary (CLEVR-like): shapes, colours, sizes, materials.

Colours are eight saturated hues, so a pixel's hue tells its object's colour whatever
the shading, and the grey ground and pale sky never pass for an object.
"""

from __future__ import annotations

SHAPES = ("cube", "sphere", "cylinder")
COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.92, 0.50, 0.08),
    "yellow": (0.90, 0.82, 0.10),
    "green": (0.15, 0.70, 0.18),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.28, 0.88),
    "purple": (0.50, 0.16, 0.80),
    "pink": (0.92, 0.25, 0.62),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": 0.35, "large": 0.7}  # half-extent in world units (sphere radius, cube half-side)
SIZE_NAMES = tuple(SIZES)
MATERIALS = ("matte", "metal")


def describe(shape: int, colour: int, size: int, material: int | None = None) -> str:
    """'large red metal cube' (the material is left out when None)."""
    words = [SIZE_NAMES[size], COLOUR_NAMES[colour]]
    if material is not None:
        words.append(MATERIALS[material])
    return " ".join(words + [SHAPES[shape]])


def label(shape: int, colour: int) -> str:
    """The class an object is detected and scored as: 'red cube'."""
    return f"{COLOUR_NAMES[colour]} {SHAPES[shape]}"


def words() -> list[str]:
    """Every word a prompt in this world can use (the toy text encoder's vocabulary)."""
    extra = ["a", "an", "add", "the", "complete", "image", "gray", "grey", "background", "photo", "of", "object",
             "on", "ground", "scene", "empty"]
    return sorted(set(SHAPES) | set(COLOURS) | set(SIZES) | set(MATERIALS) | set(extra))
