"""`python -m trainer convert-lora` and `lora-info`, run as users run them."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from emplace.lora import load_lora
from emplace.weights import read_metadata

ROOT = Path(__file__).resolve().parents[2]


def trainer(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def peft_file(folder: Path) -> Path:
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    g = torch.Generator().manual_seed(0)
    sd = {f"base_model.model.{attn}.to_k.lora_A.weight": torch.randn(4, 768, generator=g),
          f"base_model.model.{attn}.to_k.lora_B.weight": torch.randn(320, 4, generator=g)}
    save_file(sd, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16}))
    return folder / "adapter_model.safetensors"


def test_convert_writes_kohya_with_alpha_and_sd15_metadata(tmp_path):
    out = tmp_path / "converted.safetensors"
    result = trainer("convert-lora", peft_file(tmp_path), out)
    assert result.returncode == 0, result.stderr
    assert "1 layers" in result.stdout and "base SD1.5" in result.stdout
    lora = load_lora(out)
    (m,) = lora.modules.values()
    assert m.name == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" and m.scale == 4.0
    meta = read_metadata(out)
    assert meta["emplace.method"] == "converted" and meta["ss_base_model_version"] == "sd_v1"

    shown = trainer("lora-info", out)
    assert shown.returncode == 0 and "method: converted" in shown.stdout and "kohya form" in shown.stdout


def test_bad_input_is_one_clear_line_without_traceback(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"\x80\x04K\x01.")
    result = trainer("convert-lora", tmp_path / "bad.ckpt", tmp_path / "out.safetensors")
    assert result.returncode == 2
    assert "is a PyTorch pickle" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_extract_lora_recovers_a_low_rank_fine_tune(tmp_path):
    from emplace.testing.tiny_models import tiny_unet

    base = tiny_unet().state_dict()
    g = torch.Generator().manual_seed(1)
    tuned = dict(base)
    changed = [k for k in base if k.endswith(("attn2.to_k.weight", "attn1.to_q.weight", "conv1.weight"))]
    for k in changed:  # a rank-2 change of every matched layer
        w = base[k]
        a, b = torch.randn(w.shape[0], 2, generator=g) * 0.1, torch.randn(2, w[0].numel(), generator=g) * 0.1
        tuned[k] = w + (a @ b).reshape(w.shape)
    save_file({k: v.contiguous() for k, v in base.items()}, tmp_path / "base.safetensors")
    save_file({k: v.contiguous() for k, v in tuned.items()}, tmp_path / "tuned.safetensors")

    ok = trainer("extract-lora", "--tuned", tmp_path / "tuned.safetensors", "--base", tmp_path / "base.safetensors",
                 "--rank", "2", "--out", tmp_path / "x.safetensors")
    assert ok.returncode == 0, ok.stderr
    lora = load_lora(tmp_path / "x.safetensors")
    assert len(lora.modules) == len(changed)
    for k in changed:
        m = lora.modules["lora_unet_" + k[: -len(".weight")].replace(".", "_")]
        torch.testing.assert_close(base[k] + m.delta(), tuned[k], rtol=1e-4, atol=1e-5)
    assert "relative error 0.0000" in ok.stdout

    low = trainer("extract-lora", "--tuned", tmp_path / "tuned.safetensors", "--base", tmp_path / "base.safetensors",
                  "--rank", "1", "--out", tmp_path / "y.safetensors")
    assert low.returncode == 0 and "worst 0.0000" not in low.stdout  # rank 1 cannot hold a rank-2 change


def test_extract_lora_refuses_unrelated_models(tmp_path):
    save_file({"a.weight": torch.zeros(4, 4)}, tmp_path / "a.safetensors")
    save_file({"a.weight": torch.zeros(4, 8)}, tmp_path / "b.safetensors")
    r = trainer("extract-lora", "--tuned", tmp_path / "b.safetensors", "--base", tmp_path / "a.safetensors",
                "--out", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "different architectures" in r.stderr
