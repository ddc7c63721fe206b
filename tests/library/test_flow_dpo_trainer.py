"""python -m trainer dpo on flow-matching DiTs: tiny Flux, Flux Fill and SD3 folders (diffusers' own classes, head
dims ComfyUI can hold), every method, exact resume, two processes, Flux Fill's inputs as its pipeline builds them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emplace.lora import load_lora
from emplace.testing.tiny_dit import write_tiny_flux, write_tiny_sd3
from emplace.weights import read_metadata
from test_dpo_trainer import ROOT, pairs_at

pytestmark = pytest.mark.slow  # whole training runs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return pairs_at(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("flow_models")
    return {"flux": write_tiny_flux(base / "flux"), "flux-fill": write_tiny_flux(base / "flux_fill", fill=True),
            "sd3": write_tiny_sd3(base / "sd3")}


def train(tmp_path, model, data, **settings):
    from trainer.dpo import DPOConfig, train as run_training

    settings = dict(dict(steps=40, batch=2, lr=3e-3, beta=2500.0, rank=4, seed=1, resolution=64, targets="all"),
                    **settings)
    config = DPOConfig(model=model, data=data, output=tmp_path / "lora.safetensors", work=tmp_path / "work",
                       checkpoint_every=1000, log_every=1, **settings)
    config.validate()
    run_training(config)
    return config, json.loads((config.work / "eval.json").read_text())


RUNS = [("flux", m) for m in ("dpo", "mask-dpo", "asymmetric", "commonality", "asap")] + \
    [("flux-fill", "dpo"), ("flux-fill", "mask-dpo"), ("sd3", "dpo"), ("sd3", "asap")]


@pytest.mark.parametrize("model,method", RUNS)
def test_each_method_learns_its_pairs_on_a_flow_model(tmp_path, flow_models, pairs, model, method):
    settings = {"method": method} | ({"link": "sigmoid", "tau": 5.0} if method == "asap" else {})
    if method == "dpo":  # and the validation sheet, sampled by the family's own pipeline (Flux Fill: inpainting)
        settings |= {"validation": 1, "validation_steps": 2}
    config, after = train(tmp_path, flow_models[model], pairs, **settings)
    assert method != "dpo" or (config.work / "validation.png").is_file()
    # on the fixed pair set with fixed noise: accuracy 0 and margin 0 before training (policy = reference)
    assert after["margin"] > 0
    assert after["accuracy"] >= 0.5 if method == "asymmetric" else after["accuracy"] > 0.5
    lora = load_lora(config.output)
    # the layer names ComfyUI maps for a diffusers-named DiT layer (OneTrainer's form)
    assert lora.modules and all(n.startswith("lora_transformer_") for n in lora.modules)
    meta = read_metadata(config.output)
    assert meta["emplace.base_family"] == model and meta["emplace.method"] == method
    assert meta["ss_base_model_version"] == ("sd3" if model == "sd3" else "flux1")


def test_flux_fill_gets_its_inputs_as_its_pipeline_builds_them(flow_models):
    from emplace.diffusion import load_backend

    backend = load_backend(flow_models["flux-fill"], 64)
    assert backend.is_inpainting and backend.family.key == "flux-fill"
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(2, 3, 64, 64, generator=g), (torch.rand(2, 64, 64, generator=g) > 0.5).float()
    ours = backend.inpaint_inputs(images, masks)
    pipe = backend.pipe
    with torch.no_grad():
        raw = pipe.vae.encode((images * (1 - masks[:, None]) + 0.5 * masks[:, None]) * 2 - 1).latent_dist.mean
        mask, masked = pipe.prepare_mask_latents(masks[:, None], raw, 2, 16, 1, 64, 64, torch.float32, "cpu", None)
    theirs = torch.cat([masked, mask], -1)  # what FluxFillPipeline concatenates after the packed noisy latent
    torch.testing.assert_close(pipe._pack_latents(ours, 2, ours.shape[1], 8, 8), theirs)


def test_flow_noise_is_a_straight_line_and_fixed_sigmas_are_kept(flow_models):
    from emplace.diffusion import load_backend

    backend = load_backend(flow_models["sd3"], 64)
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    sigma = backend.draw_timesteps(gens, 0.0, 1.0)
    assert sigma.min() > 0 and sigma.max() < 1 and sigma.std() > 0.1
    low = backend.draw_timesteps([torch.Generator().manual_seed(i) for i in range(64)], 0.0, 0.2)
    assert low.max() < 3 * 0.2 / (1 + 2 * 0.2) + 1e-6  # [0, 0.2) before the scheduler's shift of 3
    fixed = backend.draw_timesteps(gens, 0.0, 1.0, (0.25, 0.75))
    assert set(fixed.tolist()) == {0.25, 0.75}
    x0, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    noisy, target = backend.noised(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(noisy[0], x0[0]) and torch.equal(noisy[1], noise[1]) and torch.equal(target, noise - x0)


def test_resuming_a_flux_run_gives_the_same_weights_as_one_run(tmp_path, flow_models, pairs):
    from trainer.dpo import DPOConfig, train as run_training

    common = dict(method="dpo", batch=2, lr=1e-3, rank=2, seed=3, resolution=64, targets="all", beta=2500.0)
    straight, _ = train(tmp_path / "a", flow_models["flux"], pairs, steps=4, **common)
    config = DPOConfig(model=flow_models["flux"], data=pairs, output=tmp_path / "b" / "lora.safetensors",
                       work=tmp_path / "b" / "work", checkpoint_every=2, steps=2, **common)
    run_training(config)
    config.steps = 4
    run_training(config, resume=True)
    a, b = load_lora(straight.output), load_lora(config.output)
    assert set(a.modules) == set(b.modules)
    for name, m in a.modules.items():
        assert torch.equal(m.down, b.modules[name].down) and torch.equal(m.up, b.modules[name].up)


def test_two_processes_on_flux_equal_one_of_twice_the_batch(tmp_path, flow_models, pairs):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")

    def config(name, batch):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'model = "{flow_models["flux"]}"\ndata = "{pairs}"\noutput = "{tmp_path / name}.safetensors"\n'
                       f'work = "{tmp_path / name}"\nmethod = "dpo"\nsteps = 2\nbatch = {batch}\nlr = 1e-3\n'
                       f'rank = 2\nresolution = 64\nbeta = 5000.0\n')
        return cfg

    one = subprocess.run([sys.executable, "-m", "trainer", "dpo", "--config", str(config("one", 2))], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-1500:]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29541", "-m", "trainer", "dpo",
                          "--config", str(config("two", 1))], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_lora(tmp_path / "one.safetensors"), load_lora(tmp_path / "two.safetensors")
    moved = 0.0
    for name, m in a.modules.items():
        torch.testing.assert_close(m.up, b.modules[name].up, rtol=1e-3, atol=1e-5)
        moved = max(moved, m.up.abs().max().item())
    assert moved > 1e-4  # the LoRA did train, well above the tolerance


def test_flow_models_refuse_text_encoder_training_plainly(tmp_path, flow_models, pairs):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="'train_text_encoder' is for SD1.5/SDXL; Flux trains its transformer only"):
        train(tmp_path, flow_models["flux"], pairs, steps=1, train_text_encoder=True)


@pytest.mark.parametrize("model", ["flux", "sd3"])
def test_a_transformer_alone_trains_with_a_local_config_folder(tmp_path, flow_models, pairs, model):
    """As ComfyUI users hold it: the transformer in one file (models/diffusion_models); the rest from a local folder."""
    from emplace.diffusion import ModelFolderError, load_backend

    single = tmp_path / f"{model}_transformer.safetensors"
    shutil.copy(flow_models[model] / "transformer" / "diffusion_pytorch_model.safetensors", single)
    name = "Flux" if model == "flux" else "SD3"
    with pytest.raises(ModelFolderError, match=f"is a {name} transformer alone .* set model_config to a diffusers"):
        load_backend(single)
    config, after = train(tmp_path, single, pairs, steps=2, model_config=flow_models[model])
    assert load_backend(single, 64, flow_models[model]).family.key == model
    assert read_metadata(config.output)["emplace.base_family"] == model
