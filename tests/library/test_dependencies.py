"""The trainer's dependency check: one message with both versions and the fix; the bounds it names are the
requirements' own, and pyproject says the same as the requirements files."""

import re
import tomllib
from pathlib import Path

import pytest

from trainer.dependencies import (
    ACCELERATE_AT_LEAST,
    PEFT_AT_LEAST,
    TRANSFORMERS_BELOW,
    DependencyError,
    check_training_dependencies,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"transformers": "5.23.0", "peft": "0.21.2", "accelerate": "1.16.0", "diffusers": "0.42.1"}


def test_the_tested_pair_passes():
    check_training_dependencies(GOOD)
    check_training_dependencies({**GOOD, "transformers": "5.25.0", "peft": "0.22.0"})  # once such a peft exists


def test_the_installed_packages_pass():
    """The set CI installs works together (this reads the real metadata and transformers' MIN_PEFT_VERSION)."""
    check_training_dependencies()


def test_a_transformers_too_new_for_the_released_peft_names_both_versions_and_the_fix():
    with pytest.raises(DependencyError) as e:
        check_training_dependencies({**GOOD, "transformers": "5.25.0"})
    message = str(e.value)
    assert "transformers 5.25.0 needs peft >= 0.22.0, but peft 0.21.2 is installed" in message
    assert "pip install 'transformers<5.24'" in message and "pip install -U 'peft>=0.22.0'" in message
    assert isinstance(e.value, RuntimeError) and "\n" not in message


def test_a_peft_too_old_for_transformers_asks_for_a_newer_peft():
    with pytest.raises(DependencyError, match=r"transformers 5\.23\.0 needs peft >= 0\.20\.0, but peft 0\.19\.1 "
                                              r"is installed: pip install -U 'peft>=0\.20\.0'$"):
        check_training_dependencies({**GOOD, "peft": "0.19.1"})
    with pytest.raises(DependencyError, match=r"diffusers 0\.42\.1 needs peft >= 0\.17\.0, but peft 0\.16\.0"):
        check_training_dependencies({**GOOD, "transformers": "4.57.6", "peft": "0.16.0"})


def test_missing_packages_are_named_with_what_to_install():
    with pytest.raises(DependencyError) as e:
        check_training_dependencies({"transformers": "5.23.0", "diffusers": "0.42.1"})
    message = str(e.value)
    assert message.startswith("training needs peft and accelerate, which are not installed")
    assert f"pip install 'peft>={PEFT_AT_LEAST}' 'accelerate>={ACCELERATE_AT_LEAST}'" in message
    assert "requirements-train.txt" in message
    with pytest.raises(DependencyError, match="training needs accelerate, which is not installed"):
        check_training_dependencies({**GOOD, "accelerate": None})


def test_an_old_accelerate_is_refused():
    with pytest.raises(DependencyError, match=r"accelerate 0\.34\.2 is installed: pip install -U 'accelerate>=1\.1'"):
        check_training_dependencies({**GOOD, "accelerate": "0.34.2"})


def requirements(name: str) -> dict[str, str]:
    """{package: its specifier} of one requirements file, comments and includes left out."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            package = re.match(r"[A-Za-z0-9_.\-\[\]]+", line).group(0)
            out[package.lower()] = line[len(package):].replace(" ", "")
    return out


def as_dict(specs: list[str]) -> dict[str, str]:
    return {re.match(r"[A-Za-z0-9_.\-\[\]]+", s).group(0).lower(): re.sub(r"^[A-Za-z0-9_.\-\[\]]+", "", s).replace(
        " ", "") for s in specs}


def test_the_check_uses_the_requirements_bounds_and_pyproject_says_the_same():
    train = requirements("requirements-train.txt")
    assert train["transformers"] == f"<{TRANSFORMERS_BELOW}"
    assert train["peft"].startswith(f">={PEFT_AT_LEAST}")
    assert train["accelerate"].startswith(f">={ACCELERATE_AT_LEAST}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert as_dict(project["dependencies"]) == requirements("requirements.txt")
    assert as_dict(project["optional-dependencies"]["train"]) == train
    assert as_dict(project["optional-dependencies"]["test"]) == requirements("requirements-test.txt")
