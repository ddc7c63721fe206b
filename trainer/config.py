"""Training configs: one dataclass per command, read the same way everywhere.

A config is a plain dataclass whose fields are made with `setting(...)` (a default, a help
line, and optional bounds or choices). `load_config` reads a TOML file, lays the command
line's `--name value` overrides on top, and checks every key's type and range at once,
naming the key, before anything loads. `add_config_arguments` gives a subcommand
`--config FILE`, one `--name` option per setting, the one spelling of resuming,
`--resume` (`--resume latest` means the same), and `--write-config FILE`, which writes a
commented example TOML of every setting with its default (made from the dataclass, so the
help, the example and the checks cannot drift apart).

Relative paths in a TOML file are relative to that file; on the command line, to the
current folder.
"""

from __future__ import annotations

import argparse
import difflib
import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from emplace.files import why_not_a_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

REQUIRED = MISSING


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the source."""


def setting(default: Any = REQUIRED, help: str = "", *, low: float | None = None, high: float | None = None,
            choices: tuple | None = None) -> Any:
    """A config field: `low`/`high` are inclusive bounds, `choices` the allowed values."""
    meta = {"help": help, "low": low, "high": high, "choices": choices}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class TrainingConfig:
    """The settings every training command shares; a command's config subclasses this."""

    work: Path = setting(Path("runs/train"), "checkpoints, TensorBoard logs, curves")
    steps: int = setting(1000, "optimisation steps (0 writes the initial weights)", low=0)
    batch: int = setting(1, "items per process and micro-step", low=1)
    grad_accum: int = setting(1, "micro-steps per optimisation step", low=1)
    lr: float = setting(1e-4, "peak learning rate", low=0.0)
    warmup: int = setting(0, "linear warm-up steps (at most a tenth of the run)", low=0)
    schedule: str = setting("constant", "after the warm-up: held, or cosine decay to zero",
                            choices=("constant", "cosine"))
    weight_decay: float = setting(1e-2, "AdamW weight decay", low=0.0)
    max_grad_norm: float = setting(1.0, "gradients are clipped to this norm", low=0.0)
    seed: int = setting(0, "seeds the model, the data order and the noise")
    mixed_precision: str = setting("no", "accelerate's mixed precision", choices=("no", "fp16", "bf16"))
    checkpoint_every: int = setting(250, "steps between checkpoints (also one at the end)", low=1)
    log_every: int = setting(10, "steps between TensorBoard points", low=1)
    minutes: float = setting(0.0, "stop training after this long (0: no limit)", low=0.0)

    def validate(self) -> None:
        """Checks that involve several settings; a command overrides it (and calls this)."""


# --- reading values ---------------------------------------------------------------------------


def _allowed_types(annotation) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(a for a in typing.get_args(annotation))
    return (annotation,)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _convert(value: Any, kind: type, from_text: bool, base: Path) -> Any:
    """`value` as `kind`, or raise TypeError/ValueError. Text from the command line is parsed;
    TOML values keep their type (a TOML string is never taken as a number)."""
    if kind is type(None):
        if value is None or (from_text and value.lower() in ("", "none")):
            return None
        raise TypeError
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise TypeError
    if kind is int:
        if from_text:
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if kind is float:
        if from_text:
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if kind is Path:
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            return path if path.is_absolute() else base / path
        if isinstance(value, Path):
            return value
        raise TypeError
    raise TypeError(f"unsupported setting type {kind}")


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path",
          type(None): "none"}


def read_value(cls: type, name: str, value: Any, from_text: bool = False, base: Path = Path(".")) -> Any:
    """One setting, converted and checked against its type, bounds and choices."""
    spec = {f.name: f for f in fields(cls)}[name]
    kinds = _allowed_types(typing.get_type_hints(cls)[name])
    for kind in sorted(kinds, key=lambda k: k is str):  # text last: "3" on the command line may be a number
        try:
            converted = _convert(value, kind, from_text, base)
            break
        except (TypeError, ValueError):
            continue
    else:
        wanted = " or ".join(_NAMES.get(k, str(k)) for k in kinds)
        raise ConfigError(f"'{name}' must be {wanted}, got {value!r}")
    meta = spec.metadata
    if converted is not None:
        if meta.get("choices") and converted not in meta["choices"]:
            raise ConfigError(f"'{name}' must be one of {', '.join(map(str, meta['choices']))}, got {converted!r}")
        if meta.get("low") is not None and converted < meta["low"]:
            raise ConfigError(f"'{name}' must be at least {meta['low']}, got {converted!r}")
        if meta.get("high") is not None and converted > meta["high"]:
            raise ConfigError(f"'{name}' must be at most {meta['high']}, got {converted!r}")
    return converted


def load_config(cls: type, path: Path | None = None, overrides: dict[str, str] | None = None):
    """The config from the TOML file at `path` (optional) with command-line `overrides` (text) on top.
    Every problem is reported at once, each naming its key."""
    source = str(path) if path else "the command line"
    raw: dict[str, Any] = {}
    if path is not None:
        if why := why_not_a_file(path):
            raise ConfigError(f"config file {path} {why}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    known = {f.name: f for f in fields(cls)}
    problems = [unknown_setting(k, known) for k in sorted(set(raw) - set(known))]
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in known:
            try:
                values[name] = read_value(cls, name, value, False, path.parent if path else Path("."))
            except ConfigError as e:
                problems.append(str(e))
    for name, text in (overrides or {}).items():
        try:
            values[name] = read_value(cls, name, text, True)
        except ConfigError as e:
            problems.append(f"{e} (on the command line)")
    missing = [n for n, f in known.items()
               if f.default is MISSING and f.default_factory is MISSING and n not in values]
    problems += [f"'{n}' is missing" for n in missing]
    if problems:
        if any(p.startswith("unknown") for p in problems):
            problems.append(f"known settings: {', '.join(known)}")
        raise ConfigError(f"{source}: " + "; ".join(problems))
    config = cls(**values)
    config.validate()
    return config


def unknown_setting(name: str, known) -> str:
    nearest = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"unknown setting '{name}'" + (f" (did you mean '{nearest[0]}'?)" if nearest else "")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escaping is valid TOML


def allowed_values(meta) -> str:
    """'one of a, b; >= 0' from a setting's choices and bounds ('' when anything of its type goes)."""
    allowed = []
    if meta.get("choices"):
        allowed.append("one of " + ", ".join(map(str, meta["choices"])))
    if meta.get("low") is not None:
        allowed.append(f">= {meta['low']}")
    if meta.get("high") is not None:
        allowed.append(f"<= {meta['high']}")
    return "; ".join(allowed)


def example_config(cls: type) -> str:
    """A commented TOML file with every setting of `cls`: its help, allowed values and default."""
    lines = [f"# {cls.__name__}: every setting, commented out at its default. Uncomment what you change;",
             "# the required ones have no default. Relative paths are relative to this file.", ""]
    for f in fields(cls):
        meta = f.metadata
        allowed = allowed_values(meta)
        lines.append(f"# {meta.get('help', '')}" + (f" ({allowed})" if allowed else ""))
        if f.default is MISSING and f.default_factory is MISSING:
            lines.append(f"# {f.name} = ...  (required)")
        else:
            default = f.default if f.default is not MISSING else f.default_factory()
            lines.append(f"# {f.name} = (none)" if default is None else f"# {f.name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


# --- the command line -------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, toml: bool = True) -> None:
    """`--config FILE`, `--resume`, and `--<setting> VALUE` for every setting of `cls`."""
    if toml:
        parser.add_argument("--config", type=Path, help="a TOML file of settings (the options below override it)")
    parser.add_argument("--resume", nargs="?", const="latest", choices=["latest"],
                        help="continue from the newest checkpoint in the work folder")
    parser.add_argument("--write-config", type=Path, metavar="FILE",
                        help="write a commented example TOML of every setting with its default, and stop")
    group = parser.add_argument_group("settings")
    for f in fields(cls):
        default = "required" if f.default is MISSING and f.default_factory is MISSING else f"default {f.default}"
        allowed = allowed_values(f.metadata)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"setting:{f.name}", metavar="VALUE",
                           help=f"{f.metadata.get('help', '')} ({allowed + '; ' if allowed else ''}{default})"
                           .replace("%", "%%"))


def config_from_args(cls: type, args: argparse.Namespace):
    """The config a command line asks for (see `add_config_arguments`); with --write-config, the example is
    written and the command stops."""
    if getattr(args, "write_config", None) is not None:
        from emplace.files import write_atomically

        text = example_config(cls)
        write_atomically(args.write_config, lambda tmp: tmp.write_text(text))
        print(f"wrote {args.write_config}: every {cls.__name__} setting with its default")
        raise SystemExit(0)
    overrides = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("setting:") and v is not None}
    return load_config(cls, getattr(args, "config", None), overrides)
