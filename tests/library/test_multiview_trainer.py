"""python -m trainer multiview: a LoRA trained with reference attention; runs resume exactly; bad input is clear."""

import shutil
from pathlib import Path

import pytest
import torch

from emplace.files import write_jsonl
from emplace.lora import load_lora
from emplace.multiview import MultiViewContext
from emplace.multiview.diffusers_processor import remove_multiview_processors, set_multiview_processors
from emplace.testing.tiny_models import seeded_, tiny_unet
from emplace.weights import read_metadata
from trainer.__main__ import main
from trainer.config import load_config
from emplace.multiview.paired import PairedContext
from trainer.multiview import MultiViewConfig, load_records, train

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "emplace" / "defaults" / "toy_inpaint"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from emplace.scenes.datasets import multiview

    out = tmp_path_factory.mktemp("multiview")
    multiview.write(out, 16, seed=0, size=64)
    return out


def config(scenes: Path, work: Path, **changes) -> MultiViewConfig:
    settings = dict(data=scenes, output=work / "multiview.safetensors", work=work, steps=4, batch=2, rank=2,
                    checkpoint_every=2, lr=1e-3)
    return MultiViewConfig(**settings | changes)


@pytest.fixture(scope="module")
def four_steps(scenes, tmp_path_factory):
    work = tmp_path_factory.mktemp("four")
    train(config(scenes, work))
    return work


# -- training ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_writes_a_kohya_lora_that_loads_and_merges_into_the_toy_model(four_steps):
    from emplace.lora.apply import merged
    from emplace.toy_inpaint import ToyInpaintModel

    path = four_steps / "multiview.safetensors"
    lora = load_lora(path)
    assert lora.modules and all(name.startswith("lora_unet_") for name in lora.modules)
    assert all(float(m.delta().abs().max()) > 0 for m in lora.modules.values())  # every layer trained
    meta = read_metadata(path)
    assert meta["emplace.method"] == "multiview" and meta["emplace.steps"] == "4" and meta["ss_network_dim"] == "2"
    model = ToyInpaintModel.load(TOY)
    before = {n: p.clone() for n, p in model.unet.named_parameters()}
    with merged(lora, 1.0, path.name, model.unet):
        assert any(not torch.equal(p, before[n]) for n, p in model.unet.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.unet.named_parameters())


@pytest.mark.slow
def test_resuming_at_step_two_ends_where_four_steps_in_one_run_end(scenes, four_steps, tmp_path):
    checkpoints = sorted((four_steps / "checkpoints").iterdir())
    assert len(checkpoints) == 2  # steps 2 and 4
    shutil.copytree(checkpoints[0], tmp_path / "checkpoints" / checkpoints[0].name)  # as a run stopped at 2 left it
    train(config(scenes, tmp_path), resume=True)
    once, resumed = load_lora(four_steps / "multiview.safetensors"), load_lora(tmp_path / "multiview.safetensors")
    assert once.modules.keys() == resumed.modules.keys()
    for name, m in once.modules.items():
        assert torch.equal(m.delta(), resumed.modules[name].delta()), name


# -- the paired context --------------------------------------------------------------------------

def test_each_target_in_a_batch_attends_to_its_own_reference_views_as_if_alone():
    unet = seeded_(tiny_unet(cross_attention_dim=64), std=0.25).eval()
    g = torch.Generator().manual_seed(0)
    x, refs, cond = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g), \
        torch.randn(1, 7, 64, generator=g)
    run = lambda latent, t, pass_: unet(latent, t, encoder_hidden_states=cond.expand(len(latent), -1, -1)).sample
    plain = lambda t, noise, latent: latent  # noqa: E731 (the reference as it is: the comparison needs no noise)

    paired = PairedContext(refs, views=1)
    set_multiview_processors(unet, paired)
    with torch.no_grad():  # the second level's record pass stops after the last banking site
        together = [paired.denoise(x, torch.tensor([t]), run, noise_scaling=plain) for t in (400., 300.)]
    assert paired.last_site is not None
    for i in range(2):
        alone = MultiViewContext(refs[i:i + 1])
        set_multiview_processors(unet, alone)
        with torch.no_grad():
            for t, out in zip((400., 300.), together):
                torch.testing.assert_close(out[i:i + 1], alone.denoise(x[i:i + 1], torch.tensor([t]), run,
                                                                       noise_scaling=plain))
    remove_multiview_processors(unet)


# -- bad input -----------------------------------------------------------------------------------

def test_every_malformed_records_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    good = {"views": ["a.png", "a.png"], "mask": "a.png", "prompt": ""}
    write_jsonl(tmp_path / "records.jsonl", [good, good, {**good, "views": ["a.png"]}, good,
                                             {**good, "mask": "missing.png"}])
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError) as e:
        load_records(tmp_path)
    message = str(e.value)
    assert "3 bad line(s)" in message
    assert "line 3: 'views' must be a list of two or more" in message
    assert "line 5: 'mask': missing.png" in message
    assert "line 6 " in message or "line 6:" in message
    assert "line 1:" not in message and "line 4:" not in message


def test_a_bad_config_value_is_refused_naming_the_key(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('data = "scenes"\noutput = "out.safetensors"\nempty_prompt = 1.5\n')
    assert main(["multiview", "--config", str(toml), "--rank", "0"]) == 2
    err = capsys.readouterr().err
    assert "'empty_prompt' must be at most 1.0" in err and "'rank' must be at least 1" in err
    with pytest.raises(ValueError, match="'output' must end in .safetensors"):
        load_config(MultiViewConfig, overrides={"data": "d", "output": "lora.bin"})
