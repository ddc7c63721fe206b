"""The one training skeleton (trainer/loop.py) and config reading (trainer/config.py), on a tiny model."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, TrainingConfig, add_config_arguments, config_from_args, load_config, setting
from trainer.loop import Run, batch_indices, start, train


@dataclass(kw_only=True)
class LineConfig(TrainingConfig):
    data: Path = setting(help="required, to check that a missing key is named")
    mode: str = setting("plain", "a choice", choices=("plain", "fancy"))
    share: float = setting(0.5, "a bounded number", low=0.0, high=1.0)
    flag: bool = setting(False, "a switch")


def fit_a_line(config: LineConfig, resume: bool = False, poison_at: int | None = None) -> tuple[torch.nn.Linear, list]:
    """y = 3x - 1 by a 1-to-1 linear layer on 64 fixed points."""
    accelerator = start(config)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = 3 * x - 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    def step(index: int) -> dict[str, torch.Tensor]:
        idx = batch_indices(index, 64, config.batch, config.seed, 0, 1)
        loss = ((wrapped(x[idx]) - y[idx]) ** 2).mean()
        if poison_at is not None and index >= poison_at:
            loss = loss * float("nan")
        return {"loss": loss}

    history = train(config, accelerator, Run(name="line", model=wrapped, optimizer=optimizer, step=step,
                                             checkpointed={"model": model}, panels=[["loss"]]), resume=resume)
    return model, history


def test_training_lowers_the_loss_and_writes_history_curves_logs_and_checkpoints(tmp_path):
    config = LineConfig(data=tmp_path, work=tmp_path / "work", steps=60, batch=8, lr=0.05, checkpoint_every=25)
    model, history = fit_a_line(config)
    assert [h["step"] for h in history] == list(range(1, 61))
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    assert json.loads((config.work / "line_history.json").read_text()) == history
    assert (config.work / "line_curves.png").stat().st_size > 1000
    assert list((config.work / "logs" / "line").glob("events.out.tfevents.*"))
    # every checkpoint_every steps and at the end; the two newest kept
    assert sorted(p.name for p in (config.work / "checkpoints").iterdir()) == ["step-0000050", "step-0000060"]


def test_resuming_gives_exactly_the_weights_of_one_run(tmp_path):
    straight, _ = fit_a_line(LineConfig(data=tmp_path, work=tmp_path / "a", steps=8, batch=4, lr=0.05))
    config = LineConfig(data=tmp_path, work=tmp_path / "b", steps=4, batch=4, lr=0.05, checkpoint_every=2)
    fit_a_line(config)
    config.steps = 8
    resumed, history = fit_a_line(config, resume=True)
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    assert [h["step"] for h in history] == list(range(1, 9))  # the history goes on too


def test_the_learning_rate_warms_up_then_follows_the_schedule(tmp_path):
    _, history = fit_a_line(LineConfig(data=tmp_path, work=tmp_path / "w", steps=20, lr=0.1, warmup=5,
                                       schedule="cosine"))
    lrs = [h["lr"] for h in history]
    # the warm-up is capped at a tenth of the run: 2 steps here
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1])
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_a_nan_loss_stops_before_the_bad_step_and_keeps_the_checkpoint(tmp_path):
    config = LineConfig(data=tmp_path, work=tmp_path / "n", steps=10, lr=0.05, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match="at step 5.*checkpoints"):
        fit_a_line(config, poison_at=5)
    assert (config.work / "checkpoints" / "step-0000004").is_dir()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        fit_a_line(LineConfig(data=tmp_path, work=tmp_path / "none", steps=2), resume=True)


# --- config reading ----------------------------------------------------------------------------


def toml(tmp_path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_a_toml_config_loads_with_relative_paths_and_command_line_overrides(tmp_path):
    config = load_config(LineConfig, toml(tmp_path, 'data = "pairs"\nsteps = 7\nlr = 1\nmode = "fancy"\n'),
                         {"steps": "9", "flag": "true", "share": "0.25"})
    assert config.data == tmp_path / "pairs" and config.steps == 9 and config.lr == 1.0
    assert config.mode == "fancy" and config.flag is True and config.share == 0.25


@pytest.mark.parametrize("line, message", [
    ('steps = "ten"', "'steps' must be a whole number, got 'ten'"),
    ("steps = 2.5", "'steps' must be a whole number, got 2.5"),
    ('lr = "high"', "'lr' must be a number, got 'high'"),
    ("flag = 1", "'flag' must be true or false, got 1"),
    ("data = 3", "'data' must be a path, got 3"),
    ('mode = "odd"', "'mode' must be one of plain, fancy, got 'odd'"),
    ("share = 1.5", "'share' must be at most 1.0, got 1.5"),
    ("batch = 0", "'batch' must be at least 1, got 0"),
    ("bacth = 2", "unknown setting 'bacth' (did you mean 'batch'?)"),
])
def test_every_bad_value_is_named_when_the_config_loads(tmp_path, line, message):
    with pytest.raises(ConfigError, match="run.toml") as err:
        load_config(LineConfig, toml(tmp_path, line + ("" if line.startswith("data") else '\ndata = "d"')))
    assert message in str(err.value)


def test_problems_are_reported_together_and_a_missing_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(LineConfig, toml(tmp_path, 'steps = "ten"\nlr = "high"\n'))
    assert all(m in str(err.value) for m in ("'steps' must be", "'lr' must be", "'data' is missing"))
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(LineConfig, tmp_path)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(LineConfig, toml(tmp_path, "steps = = 3"))


def test_the_written_example_config_lists_every_setting_and_loads_back(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, LineConfig)
    example = tmp_path / "example.toml"
    with pytest.raises(SystemExit) as stop:
        config_from_args(LineConfig, parser.parse_args(["--write-config", str(example)]))
    assert stop.value.code == 0
    text = example.read_text()
    for f in dataclasses.fields(LineConfig):
        assert f"{f.name} = " in text, f.name
    assert "# data = ...  (required)" in text and "one of plain, fancy" in text
    with pytest.raises(ConfigError, match="'data' is missing"):  # the required key is left for the user
        load_config(LineConfig, example)
    example.write_text(text.replace("# data = ...  (required)", 'data = "d"'))
    assert load_config(LineConfig, example) == load_config(LineConfig, toml(tmp_path, 'data = "d"'))
    help_text = parser.format_help()
    assert "one of plain, fancy; default plain" in " ".join(help_text.split())


def test_the_command_line_has_one_option_per_setting_and_one_resume(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, LineConfig)
    args = parser.parse_args(["--data", "d", "--grad-accum", "2", "--resume"])
    assert args.resume == "latest" and config_from_args(LineConfig, args).grad_accum == 2
    assert parser.parse_args(["--data", "d", "--resume", "latest"]).resume == "latest"
    with pytest.raises(ConfigError, match="'grad_accum' must be a whole number, got 'two' \\(on the command line\\)"):
        config_from_args(LineConfig, parser.parse_args(["--data", "d", "--grad-accum", "two"]))


def test_an_incompatible_peft_stops_a_command_at_start_up(tmp_path, monkeypatch, capsys):
    import trainer.dependencies as dependencies
    from trainer.__main__ import main

    installed = dependencies._installed
    monkeypatch.setattr(dependencies, "_installed", lambda name: "5.25.0" if name == "transformers" else installed(name))
    monkeypatch.setattr(dependencies, "_declared_min_peft", lambda package: None)  # as transformers 5.25 declares
    assert main(["shape-classifier", "--scenes", "16", "--steps", "1", "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: transformers 5.25.0 needs peft >= 0.22.0, but peft ") and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # stopped before any work


def test_the_time_limit_stops_with_a_checkpoint_to_resume_from(tmp_path):
    config = LineConfig(data=tmp_path, work=tmp_path / "t", steps=1000, lr=0.05, minutes=1e-9, checkpoint_every=500)
    _, history = fit_a_line(config)
    stopped = len(history)
    assert stopped < 1000 and (config.work / "checkpoints" / f"step-{stopped:07d}").is_dir()
