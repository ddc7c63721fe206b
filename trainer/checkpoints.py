"""Training checkpoints as safetensors (weights, optimizer state, RNG), written atomically.

A checkpoint is a folder `step-0001200/` holding `state.safetensors`; it is written under a
temporary name and renamed into place, so an interrupted save never replaces a good one.
`--resume latest` picks the newest complete folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from emplace.weights import load_safetensors, save_safetensors

PREFIX = "step-"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, step: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    extra: dict, generators: dict[str, torch.Generator] | None = None, keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"module.{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors |= opt_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    for name, g in (generators or {}).items():
        tensors[f"rng.{name}"] = g.get_state()
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_safetensors(tmp / "state.safetensors", tensors,
                     {"step": str(step), "optimizer": json.dumps(opt_meta), "extra": json.dumps(extra)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.safetensors").is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator] | None = None) -> tuple[int, dict]:
    """Restore everything saved; returns (step, extra)."""
    tensors, meta = load_safetensors(path / "state.safetensors", "checkpoint")
    for name, m in modules.items():
        prefix = f"module.{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, json.loads(meta["optimizer"])))
    torch.set_rng_state(tensors["rng.torch"])
    for name, g in (generators or {}).items():
        g.set_state(tensors[f"rng.{name}"])
    return int(meta["step"]), json.loads(meta["extra"])
