"""scripts/setup.sh: installs with visible progress, then is a no-op while pyproject.toml, requirements.lock
and Python are unchanged (the stamp in .venv). Run on a copy of the script with a stand-in .venv/bin/python
that records its calls, so nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from tests.environment import within

from .deploytools import ROOT

FAKE_PYTHON = """#!/bin/sh
# stand-in for .venv/bin/python: records the call, plays pip
here=$(dirname "$0")/..
echo "$*" >> "$here/calls.log"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  [ -e "$here/pip-fails" ] && { echo "ERROR: No matching distribution found for nothing"; exit 3; }
  echo "Collecting fakepkg==1.0"
  echo "Installing collected packages: fakepkg"
  exit 0
fi
case "$2" in *__version__*) echo 2.13.0+cpu ;; esac
exit 0
"""


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "scripts").mkdir()
    for name in ("scripts/setup.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "improbable").write_text("#!/bin/sh\n")
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    return tmp_path


def _setup(checkout) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    return done, time.perf_counter() - start


def _calls(checkout) -> list[str]:
    log = checkout / ".venv" / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [c for c in calls if c.startswith("-m pip")]


def test_first_run_shows_progress_and_the_second_does_nothing(checkout):
    done, _ = _setup(checkout)
    assert done.returncode == 0, done.stderr
    assert "first setup of .venv" in done.stderr and "min" in done.stderr  # what and how long
    assert "installing torch==2.13.0" in done.stderr and "collecting fakepkg==1.0" in done.stderr
    assert "ready in" in done.stderr
    pip = _calls(checkout)
    assert len(pip) == 2
    assert pip[0].endswith("-c requirements.lock torch==2.13.0"), "torch first, by exact version"
    assert pip[1].endswith("-c requirements.lock -e .[dev]")
    assert (checkout / ".venv" / ".setup-stamp").exists()

    again, seconds = _setup(checkout)
    assert again.returncode == 0 and again.stderr == "" and again.stdout == ""
    assert _calls(checkout) == []
    assert seconds < within(5)


@pytest.mark.parametrize("changed", ["pyproject.toml", "requirements.lock"])
def test_a_changed_dependency_file_installs_again(checkout, changed):
    assert _setup(checkout)[0].returncode == 0
    _calls(checkout)
    with open(checkout / changed, "a") as f:
        f.write("\n# changed\n")
    done, _ = _setup(checkout)
    assert done.returncode == 0 and "dependencies changed" in done.stderr
    assert len(_calls(checkout)) == 2
    assert _setup(checkout)[0].stderr == ""  # and is a no-op again after that


def test_a_failed_install_says_why_and_is_retried_next_time(checkout):
    assert _setup(checkout)[0].returncode == 0
    (checkout / "pyproject.toml").write_text((checkout / "pyproject.toml").read_text() + "\n")
    (checkout / ".venv" / "pip-fails").touch()
    done, _ = _setup(checkout)
    assert done.returncode == 3
    assert "pip failed" in done.stderr and "No matching distribution found" in done.stderr
    assert not (checkout / ".venv" / ".setup-stamp").exists(), "no stamp: the next run tries again"
    (checkout / ".venv" / "pip-fails").unlink()
    _calls(checkout)
    assert _setup(checkout)[0].returncode == 0
    assert len(_calls(checkout)) == 2


def test_force_setup_reinstalls(checkout):
    assert _setup(checkout)[0].returncode == 0
    _calls(checkout)
    done = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "FORCE_SETUP": "1"})
    assert done.returncode == 0 and len(_calls(checkout)) == 2
