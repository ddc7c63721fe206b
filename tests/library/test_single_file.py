"""Single-file SD checkpoints (what ComfyUI keeps in models/checkpoints) as the trainer's base model."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emplace.diffusion import ModelFolderError, load_backend
from emplace.single_file import CheckpointError
from emplace.testing.tiny_sd import write_tiny_sd
from emplace.weights import WeightsFileError
from ldm_checkpoint import write_ldm_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    out = {}
    for name, kw in (("sd15", {}), ("sdxl-inpaint", {"xl": True, "in_channels": 9, "text_width_2": 48})):
        folder = write_tiny_sd(base / name, **kw)
        out[name] = (folder, write_ldm_checkpoint(folder, base / f"{name}.safetensors"))
    return out


@pytest.mark.parametrize("name", ["sd15", "sdxl-inpaint"])
def test_a_single_file_loads_as_its_diffusers_folder(checkpoints, name):
    folder, path = checkpoints[name]
    from_file, from_folder = load_backend(path, config=folder), load_backend(folder)
    assert from_file.is_inpainting == from_folder.is_inpainting == (name == "sdxl-inpaint")
    a, b = from_file.unet.state_dict(), from_folder.unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prompts = ["a red cube on the ground"]
    with torch.no_grad():
        ca, cb = from_file.encode_prompts(prompts), from_folder.encode_prompts(prompts)
        torch.testing.assert_close(ca["encoder_hidden_states"], cb["encoder_hidden_states"])
        images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(from_file.encode_images(images), from_folder.encode_images(images))


def test_without_configs_the_message_says_what_is_needed(checkpoints):
    _, path = checkpoints["sdxl-inpaint"]
    with pytest.raises(ModelFolderError, match=r"single-file checkpoint of a custom model inpainting "
                                               r"\(9-channel UNet, cross-attention width 80\).*set model_config"):
        load_backend(path)


def test_configs_of_another_architecture_are_refused(checkpoints):
    with pytest.raises(CheckpointError, match=r"describes a custom model inpainting \(9-channel UNet, cross-attention width 80\), but "
                                             r"the checkpoint is a custom model \(4-channel UNet, cross-attention width 32\)"):
        load_backend(checkpoints["sd15"][1], config=checkpoints["sdxl-inpaint"][0])


def test_a_pickled_checkpoint_is_refused_unopened(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(WeightsFileError, match="is a PyTorch pickle"):
        load_backend(ckpt)


@pytest.mark.slow
def test_the_trainer_takes_a_single_file(tmp_path, checkpoints):
    from test_dpo_trainer import pairs_at

    folder, path = checkpoints["sd15"]
    pairs = pairs_at(tmp_path / "pairs")
    config = tmp_path / "run.toml"
    base = f'data = "{pairs}"\noutput = "{tmp_path / "lora.safetensors"}"\nwork = "{tmp_path / "work"}"\n' \
           f'model = "{path}"\nsteps = 2\nbatch = 2\nrank = 2\nresolution = 32\n'
    config.write_text(base)
    run = lambda: subprocess.run([sys.executable, "-m", "trainer", "dpo", "--config", str(config)],  # noqa: E731
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
    r = run()
    assert r.returncode == 2 and "set model_config" in r.stderr and "Traceback" not in r.stderr
    config.write_text(base + f'model_config = "{folder}"\n')
    r = run()
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "lora.safetensors").is_file()
