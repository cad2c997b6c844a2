"""The code keeps the rules in ruff.toml: ruff's linter finds nothing and its formatter would change nothing."""

import shutil
import subprocess

import pytest

from tests.support import ROOT


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(command):
    done = subprocess.run([shutil.which("ruff"), *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
