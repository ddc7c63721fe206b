"""emplace-train (or python -m trainer) <command> [options]; `<command> --help` for each command."""

from __future__ import annotations

import argparse
import sys

from . import demo, dpo, location_trainer, lora_commands, make_pairs, multiview, scenes, shape_classifier, toy_inpaint

COMMANDS = [demo, scenes, dpo, location_trainer, make_pairs, toy_inpaint, shape_classifier, lora_commands, multiview]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emplace-train", description="Emplace's sidecar trainer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in COMMANDS:
        module.register(sub)
    args = parser.parse_args(argv)
    from .dependencies import DependencyError

    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, DependencyError) as e:  # bad input or set-up: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the NaN guard: the run stopped, its last checkpoint is kept
        print(f"stopped: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
