"""Tier 2: the nodes inside a real ComfyUI, in-process and through a headless server.

ComfyUI is looked for at $COMFYUI_PATH, else $HOME/ComfyUI, else two folders up when this
pack sits in custom_nodes/. Without one, every test here skips with one line saying where
it looked.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).parent
PACK_ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))


def _candidates() -> list[tuple[str, Path]]:
    out = []
    if os.environ.get("COMFYUI_PATH"):
        out.append(("$COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"])))
    out.append(("$HOME/ComfyUI", Path.home() / "ComfyUI"))
    if PACK_ROOT.parent.name == "custom_nodes":
        out.append(("two folders up", PACK_ROOT.parent.parent))
    return out


def find_comfyui() -> tuple[Path | None, str]:
    for _, path in _candidates():
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            try:
                import torchvision  # noqa: F401  (ComfyUI imports it at start-up)
            except ImportError:
                return None, (f"ComfyUI found at {path}, but its requirements are not installed here "
                              "(no torchvision): run .ci/run")
            return path.resolve(), ""
    looked = ", ".join(f"{name} ({path})" for name, path in _candidates())
    return None, f"no ComfyUI found; looked at {looked}"


COMFYUI, SKIP_REASON = find_comfyui()


def pytest_ignore_collect(collection_path, config):
    return COMFYUI is None and HERE in (collection_path, *collection_path.parents)


def pytest_terminal_summary(terminalreporter):
    if COMFYUI is None:
        terminalreporter.write_line(f"tier 2 skipped: {SKIP_REASON}", yellow=True)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI imported in-process on the CPU, with this pack loaded as ComfyUI loads it."""
    sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    import folder_paths
    import nodes

    loras = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    assert asyncio.run(nodes.load_custom_node(str(PACK_ROOT))), "the pack failed to load"
    return SimpleNamespace(nodes=nodes, node=nodes.NODE_CLASS_MAPPINGS, loras=loras, path=COMFYUI)


@pytest.fixture(scope="session")
def tiny(comfy):
    from tiny_comfy import tiny_clip, tiny_model, tiny_vae

    return SimpleNamespace(model=tiny_model(), clip=tiny_clip(), vae=tiny_vae())


@pytest.fixture(scope="session")
def server(comfy, tmp_path_factory):
    """A headless ComfyUI with this pack, an SD1.5-shaped random checkpoint and two LoRAs for it."""
    import comfy.sd
    from lora_fixtures import peft_state_dict, write_emplace_lora, write_peft_lora
    from sd15_checkpoint import write_sd15_checkpoint
    from comfy_server import ComfyServer

    base = tmp_path_factory.mktemp("comfy_server")
    srv = ComfyServer(COMFYUI, PACK_ROOT, base, test_nodes=HERE / "server_test_nodes")
    try:
        ckpt = write_sd15_checkpoint(base / "checkpoints" / "tiny_sd15.safetensors")
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt))
        layers = peft_state_dict(model, clip, std=0.05)
        write_emplace_lora(base / "loras" / "emplace_dpo.safetensors", layers, context_dim=768)
        write_peft_lora(base / "loras" / "peft_dpo.safetensors", layers)
        del model, clip
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
