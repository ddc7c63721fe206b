"""python -m trainer dpo: every method trains a LoRA on tiny models; runs resume exactly; bad input is clear."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emplace.lora import load_lora
from emplace.weights import read_metadata
from emplace.testing.tiny_sd import write_tiny_sd

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "emplace" / "defaults" / "toy_inpaint"

pytestmark = pytest.mark.slow  # whole training runs


def pairs_at(out: Path) -> Path:
    """A small fixed pair set whose winners and losers differ a lot, so a few steps show learning."""
    from emplace.files import save_image, write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    mask, obj = torch.zeros(32, 32), torch.zeros(32, 32)
    mask[8:24, 8:24], obj[12:20, 12:20] = 1, 1
    save_image(mask, out / "mask.png")
    save_image(obj, out / "object.png")
    rows = []
    for i in range(4):
        c = torch.rand(3, 1, 1, generator=g)
        winner = torch.stack([xs, ys, 1 - xs]) * c  # smooth
        loser = torch.rand(3, 32, 32, generator=g)  # noise
        for name, image in (("w", winner), ("w2", winner.flip(-1)), ("l", loser)):
            save_image(image, out / f"{i}{name}.png")
        rows.append({"prompt": f"pair {i}", "winner": [f"{i}w.png", f"{i}w2.png"], "loser": f"{i}l.png",
                     "mask": "mask.png", "object_mask": "object.png", "group": str(i),
                     "kind": "noise" if i % 2 else "static"})
    write_jsonl(out / "pairs.jsonl", rows)
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return pairs_at(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {"sd15": write_tiny_sd(base / "sd15"), "sd15-inpaint": write_tiny_sd(base / "sd15i", in_channels=9),
            "sdxl": write_tiny_sd(base / "sdxl", xl=True), "sdxl-inpaint": write_tiny_sd(base / "sdxli", xl=True,
                                                                                       in_channels=9)}


def train(tmp_path, model, data, **settings):
    from trainer.dpo import DPOConfig, train as run_training

    settings.setdefault("resolution", 32)
    config = DPOConfig(model=model, data=data, output=tmp_path / "lora.safetensors", work=tmp_path / "work",
                       checkpoint_every=1000, log_every=1, **settings)
    config.validate()
    run_training(config)
    return config, json.loads((tmp_path / "work" / "dpo_history.json").read_text())


@pytest.mark.parametrize("method", ["dpo", "mask-dpo", "asymmetric", "commonality", "asap"])
def test_every_method_lowers_its_loss_and_raises_accuracy(tmp_path, models, pairs, method):
    # on the embedded toy inpainting model (a trained diffusers UNet with a 25-channel input): a random tiny
    # UNet barely depends on its input, so no preference can be learnt from it in a few steps
    settings = dict(method=method, steps=40, batch=2, lr=3e-3, beta=2500.0, rank=4, seed=1)
    if method == "asap":
        settings |= {"link": "sigmoid", "tau": 5.0}
    config, history = train(tmp_path, TOY, pairs, **settings)
    # on the fixed pair set with fixed noise: log 2 and accuracy 0 before training (policy = reference)
    after = json.loads((config.work / "eval.json").read_text())
    assert after["margin"] > 0
    # (asymmetric sees each pair through fresh random crops, so its accuracy is the noisiest)
    assert after["accuracy"] >= 0.5 if method == "asymmetric" else after["accuracy"] > 0.5
    if method != "mask-dpo":  # (mask-dpo's loss also holds the object's denoising term)
        assert after["loss"] < math.log(2)
    lora = load_lora(config.output)
    assert lora.source_format == "kohya" and all(n.startswith("lora_unet_") for n in lora.modules)
    meta = read_metadata(config.output)
    assert meta["emplace.method"] == method and meta["emplace.steps"] == "40"
    assert meta["emplace.base_family"] == "context64"


@pytest.mark.parametrize("name", ["sd15-inpaint", "sdxl", "sdxl-inpaint"])
def test_sdxl_and_inpainting_models_train(tmp_path, models, pairs, name):
    config, history = train(tmp_path, models[name], pairs, method="mask-dpo", steps=3, batch=2, lr=1e-3, rank=2)
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    assert len(load_lora(config.output).modules) > 0


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_a_text_encoder_lora_trains_and_applies(tmp_path, models, pairs, name):
    from emplace.diffusion import load_backend
    from emplace.lora.apply import merged

    config, _ = train(tmp_path, models[name], pairs, method="dpo", steps=3, batch=2, lr=1e-2, rank=2,
                      train_text_encoder=True, validation=2, validation_steps=2)
    lora = load_lora(config.output)
    expected = {"lora_unet", "lora_te"} if name == "sd15" else {"lora_unet", "lora_te1", "lora_te2"}
    assert {n.split("_")[0] + "_" + n.split("_")[1] for n in lora.modules} == expected
    # every UNet layer trained, and each text encoder (SDXL reads the penultimate layer: its last layer gets no grad)
    assert all(m.up.abs().max() > 0 for m in lora.modules.values() if m.component == "unet")
    for prefix in expected - {"lora_unet"}:
        assert any(m.up.abs().max() > 0 for n, m in lora.modules.items() if n.startswith(prefix + "_"))

    backend = load_backend(models[name])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])

    def outputs():
        with torch.no_grad():
            cond = backend.encode_prompts(["pair 0"])
            return cond["encoder_hidden_states"], backend.unet(x, t, **cond).sample

    before = outputs()
    with merged(lora, 0.0, "trained", backend.unet, tuple(backend.text_encoders())):
        assert all(torch.equal(a, b) for a, b in zip(outputs(), before))
    with merged(lora, 1.0, "trained", backend.unet, tuple(backend.text_encoders())):
        assert not any(torch.allclose(a, b) for a, b in zip(outputs(), before))
    assert all(torch.equal(a, b) for a, b in zip(outputs(), before))  # the weights are restored afterwards

    from emplace.files import load_image

    sheet = load_image(config.work / "validation.png")  # 2 pairs x (input, without, with, winner)
    assert sheet.shape[-2:] == (2 * 32 * 8, 4 * 32 * 8)


def test_a_lora_for_another_model_is_not_merged(tmp_path, models, pairs):
    from emplace.diffusion import load_backend
    from emplace.lora import LoraMismatchError
    from emplace.lora.apply import merged

    config, _ = train(tmp_path, models["sd15"], pairs, method="dpo", steps=1, batch=1, rank=2)
    backend = load_backend(models["sdxl"])
    with pytest.raises(LoraMismatchError, match="'sd15 lora'"):
        with merged(load_lora(config.output), 1.0, "sd15 lora", backend.unet):
            pass


@pytest.mark.parametrize("auto_beta", [0.0, 0.3])
def test_resuming_gives_the_same_weights_as_one_run(tmp_path, models, pairs, auto_beta):
    common = dict(method="dpo", batch=2, lr=1e-3, rank=2, seed=3, beta_target=auto_beta)
    straight, _ = train(tmp_path / "a", models["sd15"], pairs, steps=4, **common)
    from trainer.dpo import DPOConfig, train as run_training

    config = DPOConfig(model=models["sd15"], data=pairs, output=tmp_path / "b" / "lora.safetensors",
                       work=tmp_path / "b" / "work", resolution=32, checkpoint_every=2, steps=2, **common)
    run_training(config)
    config.steps = 4
    run_training(config, resume=True)
    a, b = load_lora(straight.output), load_lora(config.output)
    for name, m in a.modules.items():
        assert torch.equal(m.down, b.modules[name].down) and torch.equal(m.up, b.modules[name].up)
    # the automatic beta is part of the state: the same after resuming, and recorded in the LoRA
    assert read_metadata(straight.output)["emplace.beta"] == read_metadata(config.output)["emplace.beta"]
    if auto_beta:
        assert float(read_metadata(config.output)["emplace.beta"]) != 1250.0


def test_the_consistency_anchors_hold_the_prediction_outside_and_inside_the_mask(tmp_path, pairs):
    """The same run with and without the anchor: with it, the policy's error outside the mask stays
    near the reference's (ratio 1), and inside with the in-mask anchor; the held-out split, the
    ratios and the automatic beta are reported."""
    common = dict(method="dpo", steps=20, batch=2, lr=3e-3, rank=4, seed=1, heldout=pairs, beta_target=0.3,
                  timestep_low=0.1, timestep_high=0.9)
    _, free = train(tmp_path / "free", TOY, pairs, consistency=0.0, **common)
    config, anchored = train(tmp_path / "anchored", TOY, pairs, consistency=100.0, sft_weight=1.0, **common)
    drift = lambda history, where="out": sum(abs(h[f"winner_{where}"] - 1) for h in history[-10:]) / 10  # noqa: E731
    assert drift(anchored) < drift(free)
    # the same anchor inside the mask holds the prediction there
    _, held_in = train(tmp_path / "in_mask", TOY, pairs, consistency=0.0, consistency_in_mask=100.0, **common)
    assert drift(held_in, "in") < drift(free, "in")
    # these pairs are learnt within a step or two (the factor falls below the target): the automatic beta falls
    assert anchored[-1]["beta"] < anchored[0]["beta"] == 1250.0
    report = json.loads((config.work / "eval.json").read_text())
    assert {"accuracy", "loss", "winner_in", "winner_out", "loser_in", "loser_out"} <= set(report["heldout"])
    assert report["beta"] == pytest.approx(float(read_metadata(config.output)["emplace.beta"]))


def test_the_object_anchor_is_mask_dpos_object_term_for_any_method(tmp_path, pairs):
    """With the preference off (beta 0), dpo with `sft_region = "object"` trains exactly mask-dpo's weights
    (its object term, lam = 1), and not those of the anchor over the whole image; asymmetric, which crops
    the winner, crops the object mask with it."""
    common = dict(steps=3, batch=2, lr=3e-3, rank=2, seed=1, beta=0.0, consistency=0.0)
    mask_dpo, _ = train(tmp_path / "mask-dpo", TOY, pairs, method="mask-dpo", lam=1.0, **common)
    on_object, _ = train(tmp_path / "object", TOY, pairs, method="dpo", sft_weight=1.0, sft_region="object", **common)
    on_image, _ = train(tmp_path / "image", TOY, pairs, method="dpo", sft_weight=1.0, **common)
    a, b, c = (load_lora(cfg.output).modules for cfg in (mask_dpo, on_object, on_image))
    assert all(torch.allclose(a[n].up, b[n].up, atol=1e-6) for n in a)
    assert not all(torch.allclose(a[n].up, c[n].up, atol=1e-6) for n in a)
    _, history = train(tmp_path / "asymmetric", TOY, pairs, method="asymmetric", steps=2, batch=2, lr=1e-3, rank=2,
                       sft_weight=1.0, sft_region="object")
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)


def test_the_preference_off_the_object_is_mask_dpos_preference_for_any_method(tmp_path, pairs):
    """dpo with `preference_region = "off-object"` trains exactly mask-dpo's weights without its object
    term (lam 0), and not those of dpo over the whole image; asymmetric crops the region with each view,
    and it changes what asymmetric learns."""
    common = dict(steps=3, batch=2, lr=3e-3, rank=2, seed=1, consistency=0.0)
    runs = {name: train(tmp_path / name, TOY, pairs, **common, **settings)[0] for name, settings in {
        "mask-dpo": dict(method="mask-dpo", lam=0.0),
        "dpo-off": dict(method="dpo", preference_region="off-object"),
        "dpo": dict(method="dpo"),
        "asymmetric-off": dict(method="asymmetric", preference_region="off-object"),
        "asymmetric": dict(method="asymmetric")}.items()}
    up = {name: load_lora(cfg.output).modules for name, cfg in runs.items()}
    same = lambda a, b: all(torch.allclose(up[a][n].up, up[b][n].up, atol=1e-6) for n in up[a])  # noqa: E731
    assert same("mask-dpo", "dpo-off") and not same("dpo", "dpo-off")
    assert not same("asymmetric", "asymmetric-off")


def test_the_preference_restricted_to_the_mask_and_chosen_loser_kinds_train(tmp_path, pairs):
    config, history = train(tmp_path, TOY, pairs, method="mask-dpo", steps=2, batch=2, lr=1e-3, rank=2,
                            preference_region="mask", loser_kinds="noise")
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert "2 pairs" in read_metadata(config.output)["emplace.data_summary"]


def test_bad_config_and_data_are_reported_plainly(tmp_path, models, pairs):
    run = lambda cfg: subprocess.run([sys.executable, "-m", "trainer", "dpo", "--config", str(cfg)], cwd=ROOT,  # noqa: E731
                                     capture_output=True, text=True, timeout=120)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "{models["sd15"]}"\ndata = "{pairs}"\noutput = "x.safetensors"\nmethood = "dpo"\n')
    r = run(cfg)
    assert r.returncode == 2 and "unknown setting 'methood'" in r.stderr and "Traceback" not in r.stderr
    # wrongly typed values are refused when the config loads (before any model loads), naming the key
    head = f'model = "{models["sd15"]}"\ndata = "{pairs}"\noutput = "x.safetensors"\n'
    cfg.write_text(head + 'steps = "ten"\nbeta = "high"\nmethod = "dpo2"\n')
    r = run(cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'steps' must be a whole number, got 'ten'" in r.stderr and "'beta' must be a number, got 'high'" in r.stderr
    assert "'method' must be one of dpo, mask-dpo" in r.stderr
    cfg.write_text(head)
    r = subprocess.run([sys.executable, "-m", "trainer", "dpo", "--config", str(cfg), "--lr", "-1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "'lr' must be at least 0.0, got -1.0 (on the command line)" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pairs.jsonl").write_text('{"prompt": "x", "winner": "nope.png", "loser": "nope.png"}\n')
    cfg.write_text(f'model = "{models["sd15"]}"\ndata = "{bad}"\noutput = "x.safetensors"\n')
    r = run(cfg)
    assert r.returncode == 2 and "line 1: 'winner' file nope.png does not exist" in r.stderr
    cfg.write_text(head + 'loser_kinds = "blur, noise"\n')
    r = run(cfg)
    assert r.returncode == 2 and "no pair in" in r.stderr and "has kind blur (its kinds: noise, static)" in r.stderr
    no_objects = tmp_path / "no_objects"
    no_objects.mkdir()
    for name in ("0w.png", "0l.png", "mask.png"):
        (no_objects / name).write_bytes((pairs / name).read_bytes())
    (no_objects / "pairs.jsonl").write_text('{"prompt": "x", "winner": "0w.png", "loser": "0l.png", "mask": "mask.png"}\n')
    cfg.write_text(f'model = "{models["sd15"]}"\ndata = "{no_objects}"\noutput = "x.safetensors"\n'
                   'preference_region = "off-object"\n')
    r = run(cfg)
    assert r.returncode == 2 and "'preference_region' = \"off-object\" needs pairs with an \"object_mask\"" in r.stderr
    cfg.write_text(head + 'method = "asap"\nbeta_target = 0.3\ntimestep_low = 0.9\ntimestep_high = 0.5\n')
    r = run(cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'timestep_low' (0.9) must be below 'timestep_high' (0.5)" in r.stderr and "needs a sigmoid link" in r.stderr


def test_two_processes_average_their_gradients(tmp_path, pairs):
    """torchrun with 2 CPU processes of batch 1 gives the LoRA of one process with batch 2 (gloo all-reduce),
    for the UNet (DDP) and the text encoder (averaged by the trainer) alike."""
    import shutil

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")

    def config(name, batch):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'model = "{TOY}"\ndata = "{pairs}"\noutput = "{tmp_path / name}.safetensors"\n'
                       f'work = "{tmp_path / name}"\nmethod = "dpo"\nsteps = 2\nbatch = {batch}\nlr = 1e-3\n'
                       f'rank = 2\nresolution = 32\nbeta = 5000.0\ntrain_text_encoder = true\n')
        return cfg

    one = subprocess.run([sys.executable, "-m", "trainer", "dpo", "--config", str(config("one", 2))], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-1500:]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "trainer", "dpo",
                          "--config", str(config("two", 1))], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_lora(tmp_path / "one.safetensors"), load_lora(tmp_path / "two.safetensors")
    moved = 0.0
    assert any(name.startswith("lora_te_") for name in a.modules)
    for name, m in a.modules.items():
        # (the all-reduce sums in another order; Adam magnifies that to ~1e-6 on updates of ~1e-3)
        torch.testing.assert_close(m.up, b.modules[name].up, rtol=1e-3, atol=1e-5)
        moved = max(moved, m.up.abs().max().item())
    assert moved > 1e-4  # the LoRA did train, well above the tolerance


def test_pick_a_pic_parquet_trains_directly(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from test_pickapic import jpeg

    rows = {"caption": ["a red cube", "a blue sphere"], "jpg_0": [jpeg(0.1), jpeg(0.2)], "jpg_1": [jpeg(0.9), jpeg(0.8)],
            "label_0": [1.0, 0.0]}
    pq.write_table(pa.table(rows), tmp_path / "rows.parquet")
    config, history = train(tmp_path, TOY, tmp_path / "rows.parquet", method="dpo", steps=2, batch=1, lr=1e-3, rank=2)
    assert len(history) == 2 and (config.work / "pickapic" / "pairs.jsonl").is_file()
