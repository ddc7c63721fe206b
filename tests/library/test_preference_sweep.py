"""The preference sweep's variants are settings the trainer accepts, so a long sweep cannot die on a typo
after hours of earlier runs."""

from argparse import Namespace

import pytest

from bench.scene_preference import METHODS, SWEEP, common_settings, config_text
from emplace.scenes.datasets.preference import KINDS
from trainer.config import ConfigError, load_config
from trainer.dpo import DPOConfig

ASAP_ONLY = {"link", "tau"}


@pytest.mark.parametrize("variant", sorted(SWEEP))
def test_every_sweep_variant_is_a_valid_trainer_config(tmp_path, variant):
    (tmp_path / "pairs").mkdir()
    args = Namespace(steps=400, batch=8)
    # the method each variant was made for loads; any other either loads or is refused naming the setting
    made_for = "asap" if ASAP_ONLY & set(SWEEP[variant]) else "dpo"
    for method in METHODS:
        settings = common_settings(tmp_path, tmp_path / method, method, 0, args) | SWEEP[variant]
        config = tmp_path / f"{method}.toml"
        config.write_text(config_text(settings))
        try:
            assert load_config(DPOConfig, config).method == method
        except ConfigError as e:
            assert method != made_for, f"{variant} is refused for {method}: {e}"
            assert any(f"'{key}'" in str(e) for key in SWEEP[variant]), str(e)
    kinds = SWEEP[variant].get("loser_kinds", "")
    assert set(filter(None, kinds.split(","))) <= set(KINDS), f"{variant}: a loser kind the pair generator cannot make"


def test_a_misspelt_variant_setting_is_refused(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'model = "m"\ndata = "{tmp_path}"\noutput = "x.safetensors"\nconsistancy = 300.0\n')
    with pytest.raises(ConfigError, match="did you mean 'consistency'"):
        load_config(DPOConfig, config)


@pytest.mark.parametrize("method, expected", [("dpo", 1.0), ("mask-dpo", 1.0), ("asap", 1.0),
                                              ("asymmetric", 0.6), ("commonality", 0.6)])
def test_timestep_high_defaults_to_each_methods_winner_and_a_set_value_wins(tmp_path, method, expected):
    """The table with error bars chose low noise for asymmetric and commonality only; a value the user
    writes, even the plain default 1.0, is kept."""
    head = f'model = "m"\ndata = "{tmp_path}"\noutput = "x.safetensors"\nmethod = "{method}"\n'
    config = tmp_path / "run.toml"
    config.write_text(head)
    assert load_config(DPOConfig, config).timestep_high == expected
    config.write_text(head + "timestep_high = 1.0\n")
    assert load_config(DPOConfig, config).timestep_high == 1.0
    assert load_config(DPOConfig, config, {"timestep_high": "0.8"}).timestep_high == 0.8
    # the range check sees the method's own default
    config.write_text(head + "timestep_low = 0.7\n")
    if expected < 0.7:
        with pytest.raises(ConfigError, match=f"'timestep_low' \\(0.7\\) must be below 'timestep_high' \\({expected}\\)"):
            load_config(DPOConfig, config)
    else:
        assert load_config(DPOConfig, config).timestep_low == 0.7


def test_a_bench_folder_refuses_other_pair_kinds_than_its_pairs_were_made_with(tmp_path):
    import json

    from bench.scene_preference import check_pair_kinds
    from emplace.scenes.datasets.preference import DEFAULT_KINDS

    (tmp_path / "summary.json").write_text(json.dumps({"kind": "preference", "n": 800}))  # made before the key
    check_pair_kinds(tmp_path, None)
    check_pair_kinds(tmp_path, ",".join(DEFAULT_KINDS))
    with pytest.raises(SystemExit, match="made with floating,.*warp, not .*wrong_shape; use another --out"):
        check_pair_kinds(tmp_path, ",".join(KINDS))
    (tmp_path / "summary.json").write_text(json.dumps({"loser_kinds": list(KINDS)}))
    check_pair_kinds(tmp_path, " , ".join(KINDS))
    with pytest.raises(SystemExit, match="--pair-kinds"):
        check_pair_kinds(tmp_path, None)
