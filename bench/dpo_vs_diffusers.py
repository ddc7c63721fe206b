"""Steps per second and peak memory of `python -m trainer dpo` against diffusers' own
examples/research_projects/diffusion_dpo/train_diffusion_dpo.py, on the same tiny SD1.5-shaped model.

    python -m bench.dpo_vs_diffusers [--steps 30] [--batch 2] [--resolution 64] [--rank 4] [--threads N]
                                     [--out runs/bench] [--diffusers-script PATH]

Bench-only requirement: `datasets` (pip install datasets); the diffusers script loads its rows with it.
The script is read at run time (PATH, or the local diffusers mirror), copied to a temporary folder and run
from there; it is never kept in this repository. Both trainers get the same Pick-a-Pic-style parquet rows
(caption, jpg_0, jpg_1, label_0), batch, resolution, LoRA rank and targets, fp32, and run as subprocesses.
Each step's end is timestamped from its tqdm bar (TQDM_MININTERVAL=0); steps/s is taken over the steps
after the first epoch plus `--warmup`, so model loading, the end of the run and our latent/text caching
(done during our first epoch) are left out. "first epoch extra" is the first epoch's time beyond that
steady rate: for us the caching plus warm-up, for diffusers warm-up only (it encodes through the VAE and
text encoder every step). Peak RSS is per subprocess (os.wait4); on CUDA, torch.cuda.max_memory_allocated.
CPU s/step (from /proc) is the steadier figure when other jobs share the CPU; run with --threads 1 then.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRROR = "/work/.mirror/huggingface+diffusers/repo"
SCRIPT = "examples/research_projects/diffusion_dpo/train_diffusion_dpo.py"
STEP = re.compile(rb"(?:dpo \([^)]*\)|Steps): +\d+%\|[^|\r\n]*\| (\d+)/(\d+) \[")  # the two training bars
# runs a module (-m name) or a script (--path file) in this process; reports the CUDA peak at exit
WRAP = """import atexit, runpy, sys, torch
atexit.register(lambda: torch.cuda.is_available() and print(
    f"BENCH_CUDA_PEAK {torch.cuda.max_memory_allocated()}", file=sys.stderr, flush=True))
kind, target = sys.argv[1:3]
sys.argv = [target] + sys.argv[3:]
(runpy.run_module if kind == "-m" else runpy.run_path)(target, run_name="__main__")
"""
# the script imports wandb at the top but only uses it with --report_to wandb
WANDB_STUB = '"""bench stub: never used with --report_to tensorboard"""\nImage = None\n'


def diffusers_script(path: str | None, folder: Path) -> Path:
    dest = folder / "train_diffusion_dpo.py"
    if path:
        shutil.copy(path, dest)
    else:
        r = subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"HEAD:{SCRIPT}"], capture_output=True,
                           check=False)
        if r.returncode:
            sys.exit(f"no diffusers script in {MIRROR} (fetch github:huggingface/diffusers) and no "
                     f"--diffusers-script PATH: {r.stderr.decode().strip()}")
        dest.write_bytes(r.stdout)
    (folder / "wandb.py").write_text(WANDB_STUB)
    return dest


def write_rows(path: Path, n: int, size: int) -> None:
    """n Pick-a-Pic rows: a smooth gradient against noise, JPEG bytes at exactly size x size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    ys, xs = np.meshgrid(ramp, ramp, indexing="ij")

    def jpeg(a):
        buf = io.BytesIO()
        Image.fromarray((a * 255).clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    rows = {"caption": [f"pair {i}" for i in range(n)], "jpg_0": [], "jpg_1": [],
            "label_0": [float(i % 2 == 0) for i in range(n)]}  # the winner on either side, as in the real data
    for i in range(n):
        smooth, noise = np.stack([xs, ys, 1 - xs], -1) * rng.random(3), rng.random((size, size, 3))
        rows["jpg_0"].append(jpeg(noise if i % 2 else smooth))
        rows["jpg_1"].append(jpeg(smooth if i % 2 else noise))
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table(rows), path)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running process (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def measure(name: str, cmd: list[str], cwd: Path, env: dict, steps: int, epoch: int, warm: int, out: Path) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", WRAP, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen, log, tail = {}, bytearray(), b""
    while chunk := proc.stdout.read1(65536):
        now = (time.perf_counter(), cpu_seconds(proc.pid))
        log += chunk
        for m in STEP.finditer(tail + chunk):
            if int(m[2]) == steps:
                seen.setdefault(int(m[1]), now)  # the first time the bar shows step k: (wall, CPU) s
        tail = (tail + chunk)[-256:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    (out / f"{name}.log").write_bytes(log)
    if proc.returncode:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{log[-3000:].decode(errors='replace')}")
    first, last = min(k for k in seen if k >= warm), max(seen)
    rate = (last - first) / (seen[last][0] - seen[first][0])
    cpu = (seen[last][1] - seen[first][1]) / (last - first) if seen[first][1] is not None else None
    k = min(k for k in seen if k >= epoch)
    cuda = re.search(rb"BENCH_CUDA_PEAK (\d+)", log)
    return {"trainer": name, "steps_per_s": rate, "cpu_s_per_step": cpu, "timed_steps": last - first,
            "first_epoch_extra_s": seen[k][0] - seen[0][0] - k / rate, "peak_rss_mb": usage.ru_maxrss / 1024,
            "cuda_peak_mb": int(cuda[1]) / 2**20 if cuda else None}


def calibrate(resolution: int, vae_channels: tuple[int, int]) -> None:
    """What caching saves depends on how a VAE encode compares with a UNet pass: measure both models."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def seconds(fn, repeat=2):
        fn()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        from emplace.testing.tiny_sd import write_tiny_sd

        folder = write_tiny_sd(Path(tmp), vae_channels=vae_channels)
        models = {"SD1.5 at 512 px": (UNet2DConditionModel(cross_attention_dim=768), AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4), 512, 768, 77),
            f"tiny, VAE {vae_channels}, {resolution} px": (UNet2DConditionModel.from_pretrained(folder / "unet"),
                                                          AutoencoderKL.from_pretrained(folder / "vae"), resolution,
                                                          32, 16)}
        for name, (unet, vae, size, width, tokens) in models.items():
            image = torch.rand(1, 3, size, size)
            latents = vae.encode(image).latent_dist.mean
            text = torch.rand(1, tokens, width)
            t_vae = seconds(lambda: vae.encode(image))
            t_unet = seconds(lambda: unet(latents, 500, text))
            print(f"{name}: VAE encode {t_vae:.3f} s, UNet forward {t_unet:.3f} s, ratio {t_vae / t_unet:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="steps after the first epoch left out of the timing")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both; 1 on a busy machine, where waiting "
                   "OpenMP threads spin and inflate both wall and CPU time")
    p.add_argument("--diffusers-script", help="train_diffusion_dpo.py (default: from " + MIRROR + ")")
    p.add_argument("--vae-channels", default="120,240", help="the tiny VAE's widths; 120,240 makes its encoder cost, "
                   "against a UNet pass, about what SD1.5's does at 512 px (see --calibrate)")
    p.add_argument("--calibrate", action="store_true", help="time a VAE encode against a UNet forward for SD1.5 "
                   "at 512 px (random weights) and for the tiny model, then stop")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = p.parse_args()
    vae_channels = tuple(int(c) for c in args.vae_channels.split(","))
    if args.calibrate:
        return calibrate(args.resolution, vae_channels)
    epoch = -(-args.pairs // args.batch)
    if args.steps < epoch + args.warmup + 2:
        p.error(f"--steps must be at least {epoch + args.warmup + 2}: the first epoch and --warmup are not timed")
    args.out.mkdir(parents=True, exist_ok=True)
    from emplace.testing.tiny_sd import write_tiny_sd
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        tmp = Path(tmp)
        theirs_dir = tmp / "diffusers"
        theirs_dir.mkdir()
        script = diffusers_script(args.diffusers_script, theirs_dir)
        model = write_tiny_sd(tmp / "model", vae_channels=vae_channels)  # with model_index.json
        rows = tmp / "rows" / "train.parquet"
        write_rows(rows, args.pairs, args.resolution)
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
                            "TQDM_MININTERVAL": "0", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
        if args.threads:
            env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        toml = {"model": model, "data": rows, "output": tmp / "ours" / "lora.safetensors", "work": tmp / "ours",
                "method": "dpo", "rank": args.rank, "batch": args.batch, "steps": args.steps,
                "resolution": args.resolution, "lr": 1e-5, "beta": 1250.0, "mixed_precision": "no",
                "checkpoint_every": 10**6, "seed": 0}
        config = tmp / "run.toml"
        config.write_text("".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}\n"
                                  for k, v in toml.items()))
        theirs = ["--path", str(script), "--pretrained_model_name_or_path", str(model), "--dataset_name",
                  str(rows.parent), "--dataset_split_name", "train", "--cache_dir", str(tmp / "hf"), "--output_dir",
                  str(tmp / "theirs"), "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
                  "--max_train_steps", str(args.steps), "--rank", str(args.rank), "--learning_rate", "1e-5",
                  "--beta_dpo", "2500", "--lr_warmup_steps", "0", "--mixed_precision", "no",
                  "--checkpointing_steps", str(10**6), "--no_hflip", "--seed", "0", "--report_to", "tensorboard"]
        warm = epoch + args.warmup
        results = [measure("emplace", ["-m", "trainer", "dpo", "--config", str(config)], ROOT, env, args.steps,
                           epoch, warm, args.out),
                   measure("diffusers", theirs, theirs_dir, env, args.steps, epoch, warm, args.out)]

    import torch

    cuda = torch.cuda.is_available()
    setup = (f"tiny SD1.5-shaped model (VAE widths {args.vae_channels}), {args.resolution} px, batch {args.batch}, LoRA rank {args.rank}, fp32, "
             f"{args.pairs} pairs, {args.steps} steps (timed after step {warm}), torch {torch.__version__}, "
             f"{'CUDA' if cuda else f'CPU, {args.threads or torch.get_num_threads()} threads'}")
    columns = {"steps/s": "steps_per_s", "CPU s/step": "cpu_s_per_step", "peak RSS MB": "peak_rss_mb",
               **({"CUDA peak MB": "cuda_peak_mb"} if cuda else {}), "first epoch extra s": "first_epoch_extra_s"}
    ours, ref = results
    ratio = {"trainer": "ratio ours/theirs", "first_epoch_extra_s": None} | {
        k: ours[k] / ref[k] for k in columns.values() if k != "first_epoch_extra_s" and ours[k] and ref[k]}
    fmt = lambda v: "-" if v is None else v if isinstance(v, str) else f"{v:.2f}"
    lines = [setup, "", "| trainer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in ["trainer", *columns.values()]) + " |"
              for r in (*results, ratio)]
    table = "\n".join(lines)
    print(table)
    (args.out / "dpo_vs_diffusers.md").write_text(table + "\n")
    summary = {"setup": setup, "results": results, "ratio": ratio}
    (args.out / "dpo_vs_diffusers.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'dpo_vs_diffusers.md'} and .json; logs in {args.out}")


if __name__ == "__main__":
    main()
