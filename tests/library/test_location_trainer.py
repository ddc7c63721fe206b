"""python -m trainer location: pretraining lowers the loss, DPO widens the margin, eval writes its curves."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.__main__ import main

TINY = ["--width", "32", "--layers", "1", "--heads", "2", "--image-size", "32", "--bins", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from emplace.scenes.datasets import opa_layout

    root = tmp_path_factory.mktemp("location_data")
    opa_layout.write(root, 24, seed=0, size=64)
    return root


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "pre.safetensors"
    assert main(["location", "pretrain", "--data", str(data), "--out", str(out), "--steps", "60", "--batch", "16",
                 "--lr", "2e-3", "--checkpoint-every", "30", *TINY]) == 0
    return out


def margins(model_path, data):
    """Mean whole-box log-likelihood margin of each training pair's positive over its negative."""
    from emplace.location.data import dpo_pairs, load_opa
    from emplace.location.model import load_location_model
    from emplace.location.tokens import boxes_to_tokens

    model = load_location_model(model_path)
    examples = load_opa(data, "train")
    out = []
    with torch.no_grad():
        for i, p, q in dpo_pairs(examples):
            e = examples[i]
            boxes = torch.stack([e.positives[p], e.negatives[q]])
            tokens = boxes_to_tokens(boxes, *e.size, model.config.bins)
            lp = model.log_prob(e.image()[None].expand(2, -1, -1, -1), [e.category] * 2, tokens)
            out.append(float(lp[0] - lp[1]))
    return sum(out) / len(out)


@pytest.mark.slow
def test_pretraining_lowers_the_loss_and_writes_everything(pretrained):
    work = pretrained.with_name("pre_work")
    history = json.loads((work / "pretrain_history.json").read_text())
    first, last = (sum(h["nll"] for h in part) / 10 for part in (history[:10], history[-10:]))
    assert last < first - 0.3, (first, last)
    assert pretrained.is_file() and pretrained.with_suffix(".json").is_file()
    assert (work / "pretrain_curves.png").stat().st_size > 1000
    assert list((work / "logs" / "pretrain").glob("events.out.tfevents.*"))
    assert len(list((work / "checkpoints").iterdir())) == 2


@pytest.mark.slow
def test_resuming_gives_the_same_model(data, tmp_path, pretrained):
    from emplace.weights import load_safetensors

    args = ["location", "pretrain", "--data", str(data), "--batch", "8", "--checkpoint-every", "3", *TINY]
    assert main([*args, "--out", str(tmp_path / "a.safetensors"), "--steps", "6"]) == 0
    assert main([*args, "--out", str(tmp_path / "b.safetensors"), "--steps", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "b.safetensors"), "--steps", "6", "--resume"]) == 0
    a, _ = load_safetensors(tmp_path / "a.safetensors")
    b, _ = load_safetensors(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_dpo_raises_the_margin_of_positives_over_negatives(data, pretrained, tmp_path):
    out = tmp_path / "dpo.safetensors"
    assert main(["location", "dpo", "--data", str(data), "--init", str(pretrained), "--out", str(out),
                 "--steps", "40", "--batch", "16", "--lr", "1e-3", "--beta", "0.5"]) == 0
    before, after = margins(pretrained, data), margins(out, data)
    assert after > before + 1.0, (before, after)
    history = json.loads((tmp_path / "dpo_work" / "dpo_history.json").read_text())
    assert history[-1]["accuracy"] >= 0.75


@pytest.mark.slow
def test_eval_writes_the_curves_and_judges_top_proposals(data, pretrained, tmp_path, capsys):
    assert main(["location", "eval", "--data", str(data), "--model", str(pretrained), "--model", str(pretrained),
                 "--name", "a", "--name", "b", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    curve = summary["a"]["curve"]
    assert [p["n"] for p in curve] == list(range(10, 101, 10))
    assert all(b["tpr"] >= a["tpr"] and b["fpr"] >= a["fpr"] for a, b in zip(curve, curve[1:]))
    assert summary["a"] == summary["b"]  # the same model, the same seed
    assert 0 <= summary["a"]["top1_plausible"] <= 1
    assert (tmp_path / "curves.png").stat().st_size > 1000 and (tmp_path / "curves.json").is_file()
    assert "top-1 plausible" in capsys.readouterr().out


@pytest.mark.slow
def test_top1_by_reward_takes_the_box_dpo_raised_most_over_the_reference(data, pretrained, monkeypatch):
    """Ranking by DPO's implicit reward picks, among the same samples, the box whose log-likelihood rose most
    over the reference's, not the likeliest one; one verdict per background either way."""
    import emplace.scenes.placement_judge as judge
    from emplace.location.model import load_location_model
    from emplace.location.sample import propose
    from emplace.location.tokens import boxes_to_tokens
    from trainer.location_trainer import _scene_records, load_examples, top1_verdicts

    policy, reference = load_location_model(pretrained), load_location_model(pretrained)
    with torch.no_grad():  # a reference that dislikes the left half of the image: the reward favours it
        reference.head.bias[: reference.config.bins // 2] -= 3.0
    examples = [e for e in load_examples(data, "test") if len(e.positives) or len(e.negatives)][:3]
    chosen = []
    monkeypatch.setattr(judge, "judge_box", lambda record, category, box: chosen.append(box) or True)
    assert top1_verdicts(policy, examples, _scene_records(data), seed=3) == [True] * len(examples)
    likeliest = chosen[:]
    chosen.clear()
    assert top1_verdicts(policy, examples, _scene_records(data), seed=3, reference=reference) == [True] * len(examples)
    for e, box in zip(examples, chosen):
        samples = propose(policy, e.image(), e.category, 20, seed=3).samples
        tokens = boxes_to_tokens(samples, *e.size, policy.config.bins)
        images, labels = e.image()[None].expand(len(tokens), -1, -1, -1), [e.category] * len(tokens)
        with torch.no_grad():
            reward = policy.log_prob(images, labels, tokens) - reference.log_prob(images, labels, tokens)
        assert box == samples[int(reward.argmax())].tolist()
    assert chosen != likeliest


def test_bad_data_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "train_set.csv").write_text("fg_id,bg_id,position,scale,label,img_name,mask_name\n"
                                            "1,2,[1, 2, 3],0.1,1,a.jpg,b.jpg\n")
    assert main(["location", "pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "train_set.csv" in err and "Traceback" not in err


@pytest.mark.slow
def test_two_processes_train_as_one_with_twice_the_batch(data, tmp_path):
    """torchrun with 2 CPU processes of batch 4 gives the model of one process with batch 8 (DDP, gloo)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from emplace.weights import load_safetensors

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    root = Path(__file__).resolve().parents[2]
    args = ["location", "pretrain", "--data", str(data), "--lr", "1e-3", *TINY]
    assert main([*args, "--steps", "0", "--out", str(tmp_path / "start.safetensors")]) == 0
    args += ["--steps", "2"]
    assert main([*args, "--batch", "8", "--out", str(tmp_path / "one.safetensors")]) == 0
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29541", "-m", "trainer", *args,
                          "--batch", "4", "--out", str(tmp_path / "two.safetensors")], cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, _ = load_safetensors(tmp_path / "one.safetensors")
    b, _ = load_safetensors(tmp_path / "two.safetensors")
    start, _ = load_safetensors(tmp_path / "start.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # it did train, well above the tolerance
