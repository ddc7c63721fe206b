"""LoRA file commands: convert any common LoRA form to the kohya form ComfyUI loads fully; inspect one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emplace import __version__
from emplace.families import KNOWN, family_from_name
from emplace.lora import TrainingRecord, build_metadata, describe_metadata, load_lora, lora_family, save_lora


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-lora", help="convert a PEFT/diffusers LoRA to the kohya form ComfyUI loads fully")
    p.add_argument("source", type=Path, help="a LoRA .safetensors file (kohya, PEFT or diffusers names)")
    p.add_argument("output", type=Path, help="where to write the kohya-form .safetensors")
    p.add_argument("--adapter-config", type=Path,
                   help="PEFT adapter_config.json (default: the one beside the source, or the file's metadata)")
    p.add_argument("--family", choices=[f.key for f in KNOWN],
                   help="base model family, when the LoRA itself does not tell")
    p.add_argument("--title", default="", help="title written into the metadata")
    p.set_defaults(run=convert)

    p = sub.add_parser("extract-lora", help="extract a LoRA from a fine-tuned UNet and its base (truncated SVD)")
    p.add_argument("--tuned", type=Path, required=True, help="the fine-tuned UNet (.safetensors or a diffusers unet folder)")
    p.add_argument("--base", type=Path, required=True, help="the base UNet, same form")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--family", choices=[f.key for f in KNOWN], help="base model family, when it cannot be read")
    p.add_argument("--out", type=Path, required=True, help="the LoRA .safetensors to write")
    p.set_defaults(run=extract)

    p = sub.add_parser("lora-info", help="print what a LoRA file holds and its metadata")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    p.set_defaults(run=info)


def convert(args: argparse.Namespace) -> int:
    config = json.loads(args.adapter_config.read_text()) if args.adapter_config else None
    lora = load_lora(args.source, adapter_config=config)
    family = family_from_name(args.family) if args.family else lora_family(lora)
    ranks, alphas = sorted(lora.ranks()), sorted({m.alpha for m in lora.modules.values()})
    extra = {"emplace.method": "converted", "emplace.source_format": lora.source_format,
             "emplace.trainer_version": __version__}
    if family is not None:
        record = TrainingRecord(method="converted", family=family, resolution=family.resolution, rank=ranks[-1],
                                alpha=alphas[-1], data_summary=f"converted from {args.source.name}",
                                title=args.title or args.output.stem)
        extra = {**build_metadata(record), **extra}
    save_lora(args.output, lora, extra)
    print(f"wrote {args.output}: {len(lora.modules)} layers, rank {'/'.join(map(str, ranks))}, "
          f"from {lora.source_format} form, scale from {lora.alpha_source}, "
          f"base {family.name if family else 'unknown (pass --family)'}")
    return 0


def unet_weights(path: Path) -> dict:
    """A UNet's tensors from a .safetensors file or a diffusers unet folder (its safetensors files)."""
    from emplace.weights import load_safetensors

    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors UNet weights at '{path}'")
    tensors = {}
    for f in files:
        tensors |= load_safetensors(f, "UNet weights")[0]
    return tensors


def extract(args: argparse.Namespace) -> int:
    from emplace.lora.extract import extract_lora

    lora, report = extract_lora(unet_weights(args.base), unet_weights(args.tuned), args.rank)
    family = family_from_name(args.family) if args.family else lora_family(lora)
    for layer in sorted(report, key=lambda r: -r.relative_error)[:10]:
        print(f"  {layer.name}: relative error {layer.relative_error:.4f} at rank {layer.rank}")
    errors = [r.relative_error for r in report]
    extra = {"emplace.method": "extracted", "emplace.trainer_version": __version__,
             "emplace.extraction_error_mean": f"{sum(errors) / len(errors):.4f}"}
    if family is not None:
        extra = {**build_metadata(TrainingRecord(method="extracted", family=family, resolution=family.resolution,
                                                 rank=args.rank, alpha=float(args.rank),
                                                 data_summary=f"difference of {args.tuned.name} and {args.base.name}",
                                                 title=args.out.stem)), **extra}
    save_lora(args.out, lora, extra)
    print(f"wrote {args.out}: {len(report)} layers at rank <= {args.rank}; relative error kept: mean "
          f"{sum(errors) / len(errors):.4f}, worst {max(errors):.4f} (the 10 worst layers above)")
    return 0


def info(args: argparse.Namespace) -> int:
    lora = load_lora(args.path)
    if args.json:
        print(json.dumps(lora.metadata, indent=2, sort_keys=True))
        return 0
    family = lora_family(lora)
    by_component: dict[str, int] = {}
    for m in lora.modules.values():
        by_component[m.component] = by_component.get(m.component, 0) + 1
    print(f"{args.path.name}: {len(lora.modules)} layers "
          f"({', '.join(f'{n} {c}' for c, n in sorted(by_component.items()))}), "
          f"rank {'/'.join(map(str, sorted(lora.ranks())))}, {lora.source_format} form, "
          f"scale from {lora.alpha_source}, base {family.name if family else 'unknown'}")
    for line in describe_metadata(lora.metadata):
        print("  " + line)
    return 0
