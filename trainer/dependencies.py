"""Before a training run: are peft, accelerate and transformers installed, and do they work together?

transformers refuses a peft older than its `MIN_PEFT_VERSION` (transformers/integrations/peft.py) only
when the first LoRA is added, deep inside a run, and diffusers quietly turns its peft backend off. This
check says it once, up front, with both versions and the command that fixes it. It reads versions from
the installed packages' metadata and the minimums from the installed transformers' and diffusers'
source files, without importing any of them (so it costs milliseconds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import metadata

# The bounds requirements-train.txt gives (tests/library/test_dependencies.py keeps the two in step).
TRANSFORMERS_BELOW = "5.24"  # transformers >= 5.24 needs peft >= 0.22.0, and no such peft is released yet
PEFT_AT_LEAST = "0.20"  # what transformers 5.22 and 5.23 need
ACCELERATE_AT_LEAST = "1.1"  # what transformers 5.x needs (ACCELERATE_MIN_VERSION)
TRAINING_PACKAGES = {"transformers": "transformers", "peft": f"peft>={PEFT_AT_LEAST}",
                     "accelerate": f"accelerate>={ACCELERATE_AT_LEAST}"}

# Each package's MIN_PEFT_VERSION as read from its wheels: (release, minimum peft from that release on).
# Used only where the installed package's own file cannot be read (and by the tests).
KNOWN_MIN_PEFT = {
    "transformers": [("5.0.0", "0.18.0"), ("5.6.2", "0.18.2"), ("5.12.1", "0.19.0"), ("5.17.0", "0.19.1"),
                     ("5.22.2", "0.20.0"), ("5.24.0", "0.22.0")],
    "diffusers": [("0.32.0", "0.6.0"), ("0.40.0", "0.17.0")],
}
MIN_PEFT_FILES = {"transformers": "transformers/integrations/peft.py", "diffusers": "diffusers/utils/constants.py"}


class DependencyError(RuntimeError):
    """The installed training packages are missing, or are versions that do not work together."""


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _key(version: str):
    """A version to compare, as transformers compares them (packaging), or its leading numbers without it."""
    try:
        from packaging.version import Version

        return Version(version)
    except Exception:  # no packaging, or a version it cannot read
        return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:4])


def _declared_min_peft(package: str) -> str | None:
    """MIN_PEFT_VERSION from the installed package's own source file, without importing the package."""
    try:
        text = metadata.distribution(package).locate_file(MIN_PEFT_FILES[package]).read_text(encoding="utf-8")
    except Exception:
        return None
    found = re.search(r'^MIN_PEFT_VERSION\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    return found.group(1) if found else None


def _known_min_peft(package: str, version: str) -> str | None:
    need = None
    for release, minimum in KNOWN_MIN_PEFT[package]:
        if _key(version) >= _key(release):
            need = minimum
    return need


def check_training_dependencies(versions: Mapping[str, str | None] | None = None) -> None:
    """Raise DependencyError, with one message naming the versions and the fix, when transformers, peft or
    accelerate is missing, or when the installed transformers (or diffusers) needs a newer peft.

    `versions` (for tests) stands in for the installed packages: {name: version, or None when not
    installed}; names it lacks count as not installed, and the minimums come from KNOWN_MIN_PEFT.
    """
    real = versions is None
    if real:
        versions = {name: _installed(name) for name in (*TRAINING_PACKAGES, "diffusers")}
    missing = [name for name in TRAINING_PACKAGES if not versions.get(name)]
    if missing:
        names = " and ".join(missing)
        specs = " ".join(f"'{TRAINING_PACKAGES[name]}'" for name in missing)
        raise DependencyError(
            f"training needs {names}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install {specs} (or, in this pack's folder, pip install -r requirements-train.txt)")

    peft = versions["peft"]
    for package in ("transformers", "diffusers"):
        version = versions.get(package)
        if not version:
            continue
        need = (_declared_min_peft(package) if real else None) or _known_min_peft(package, version)
        if need is None or _key(peft) >= _key(need):
            continue
        if package == "transformers" and _key(version) >= _key(TRANSFORMERS_BELOW):
            fix = (f"pip install 'transformers<{TRANSFORMERS_BELOW}' (the transformers this pack is tested with), "
                   f"or upgrade peft once a peft >= {need} is released: pip install -U 'peft>={need}'")
        else:
            fix = f"pip install -U 'peft>={need}'"
        raise DependencyError(f"{package} {version} needs peft >= {need}, but peft {peft} is installed: {fix}")

    accelerate = versions["accelerate"]
    if _key(accelerate) < _key(ACCELERATE_AT_LEAST):
        raise DependencyError(f"training needs accelerate >= {ACCELERATE_AT_LEAST} (as transformers 5 does), "
                              f"but accelerate {accelerate} is installed: "
                              f"pip install -U 'accelerate>={ACCELERATE_AT_LEAST}'")
