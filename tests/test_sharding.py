"""Data parallelism and the task-sharded bank on 4 simulated CPU devices (in a subprocess)."""

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharding_script.py")


@pytest.mark.parametrize("check", ["data", "bank", "runner"])
def test_on_four_simulated_devices(check):
    out = subprocess.run([sys.executable, SCRIPT, check], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok" in out.stdout
