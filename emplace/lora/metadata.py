"""LoRA metadata: what Emplace's trainer records, plus the keys other tools read.

Written into the safetensors `__metadata__` table (string to string):
- `emplace.*`: the pack's own record (method, base family, resolution, beta, steps,
  data summary, trainer version, rank, alpha);
- kohya's `ss_*` keys (read by A1111/Forge, kohya tools and most LoRA browsers);
- `modelspec.*` (the Stability AI model spec that ComfyUI and CivitAI read).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from .. import __version__
from ..families import Family, family_from_name

PREFIX = "emplace."


BETA_CONVENTION = "-log sigmoid(beta * margin), margin over per-pixel means (diffusers beta_dpo / 2)"
"""What `beta` means in a LoRA of trainer 0.2.0 and later; 0.1.0 wrote beta with beta / 2 on the margin."""


@dataclass(frozen=True)
class TrainingRecord:
    method: str  # dpo, mask-dpo, asymmetric, commonality, asap, converted, extracted
    family: Family
    resolution: int
    rank: int
    alpha: float
    beta: float | None = None
    steps: int | None = None
    data_summary: str = ""
    title: str = ""
    trainer_version: str = __version__


def build_metadata(record: TrainingRecord) -> dict[str, str]:
    fam = record.family
    res = record.resolution
    own = {
        "method": record.method,
        "base_family": fam.key,
        "resolution": str(res),
        "rank": str(record.rank),
        "alpha": _num(record.alpha),
        "trainer_version": record.trainer_version,
        "data_summary": record.data_summary,
    }
    if record.beta is not None:
        own["beta"] = _num(record.beta)
        own["beta_convention"] = BETA_CONVENTION
    if record.steps is not None:
        own["steps"] = str(record.steps)
    meta = {PREFIX + k: v for k, v in own.items()}
    meta.update({
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(record.rank),
        "ss_network_alpha": _num(record.alpha),
        "ss_resolution": f"({res}, {res})",
        "ss_training_comment": f"Emplace {record.method}" + (f": {record.data_summary}" if record.data_summary else ""),
    })
    if record.steps is not None:
        meta["ss_max_train_steps"] = str(record.steps)
    if fam.kohya_base_version:
        meta["ss_base_model_version"] = fam.kohya_base_version
    if record.title:
        meta["ss_output_name"] = record.title
    meta.update({
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": record.title or f"Emplace {record.method} LoRA",
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": _dt.date.today().isoformat(),
        "modelspec.description": f"Preference LoRA ({record.method}) trained with Emplace {record.trainer_version}",
    })
    if fam.modelspec_architecture:
        meta["modelspec.architecture"] = f"{fam.modelspec_architecture}/lora"
        meta["modelspec.implementation"] = ("https://github.com/Stability-AI/generative-models"
                                            if fam.key == "sdxl" else "diffusers")
    return meta


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def emplace_fields(metadata: dict[str, str]) -> dict[str, str]:
    return {k[len(PREFIX):]: v for k, v in metadata.items() if k.startswith(PREFIX)}


def family_from_metadata(metadata: dict[str, str]) -> Family | None:
    for key in (PREFIX + "base_family", "ss_base_model_version", "modelspec.architecture"):
        if metadata.get(key):
            family = family_from_name(metadata[key])
            if family is not None:
                return family
    return None


_SHOWN = [
    ("method", PREFIX + "method"), ("base model", PREFIX + "base_family"), ("resolution", PREFIX + "resolution"),
    ("beta", PREFIX + "beta"), ("steps", PREFIX + "steps"), ("data", PREFIX + "data_summary"),
    ("trainer", PREFIX + "trainer_version"), ("title", "modelspec.title"),
    ("architecture", "modelspec.architecture"), ("base (kohya)", "ss_base_model_version"),
    ("rank", "ss_network_dim"), ("alpha", "ss_network_alpha"), ("steps (kohya)", "ss_max_train_steps"),
    ("comment", "ss_training_comment"),
]


def describe_metadata(metadata: dict[str, str]) -> list[str]:
    """Readable lines for the keys people care about, in a fixed order."""
    lines = []
    for label, key in _SHOWN:
        value = metadata.get(key)
        if value:
            lines.append(f"{label}: {value}")
    return lines
