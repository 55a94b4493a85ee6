"""requirements.lock pins every package the project needs (all extras) at one exact version that satisfies
pyproject.toml, leaves torch to the variant-specific install, and is what the image and .venv install."""

from __future__ import annotations

import re
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .deploytools import DOCKERFILE, ROOT

LOCK = ROOT / "requirements.lock"
REGENERATE = "run scripts/lock.sh to regenerate requirements.lock"


def _lock() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)( ; .+)?", line)
        assert match, f"requirements.lock: not an exact `name==version` pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = Version(match.group(2))
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        found += [(f"[{extra}]", Requirement(r)) for r in requirements]
    return found


def test_every_declared_dependency_is_locked_at_a_version_it_accepts():
    pins = _lock()
    environment = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64"}
    problems = []
    for where, requirement in _requirements():
        name = canonicalize_name(requirement.name)
        if name == "torch" or (requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""})):
            continue
        if name not in pins:
            problems.append(f"{requirement} ({where}) is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement} ({where}) does not accept the locked {name}=={pins[name]}")
    assert not problems, "\n".join(problems) + f"\n{REGENERATE}"


def test_torch_is_left_to_the_variant_install():
    assert "torch" not in _lock(), "the lock must not choose between the CPU and CUDA builds"
    assert not any(name.startswith("nvidia-") for name in _lock()), "CUDA libraries come with the CUDA torch"


def test_the_lock_pins_what_the_image_and_the_venv_install():
    pins = _lock()
    for package in ("celery", "flower", "sqlalchemy", "numpy", "s3fs", "pytest", "scipy"):
        assert package in pins, f"{package} is missing: {REGENERATE}"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert "COPY requirements.lock" in dockerfile and dockerfile.count("-c requirements.lock") == 2
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert setup.count("-c requirements.lock") == 2, "torch and the project are both installed under the lock"
