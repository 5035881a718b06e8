"""The wheel: the library, its runner and the configs (as supsup_jax.configs), no top-level
`experiments`; installed on its own it runs a named config from any directory."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out), ROOT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = out.glob("supsup_jax-*.whl")
    return path


def test_wheel_ships_the_configs_and_no_experiments_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("experiments/")]
    configs = sorted(n.split("/")[-1] for n in names if n.startswith("supsup_jax/configs/"))
    assert configs == sorted(f for f in os.listdir(os.path.join(ROOT, "experiments", "configs"))
                             if f.endswith(".py"))
    assert "supsup_jax/kernels/bitops.cc" in names
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "supsup-run = supsup_jax.runner.cli:console_main" in zipfile.ZipFile(wheel).read(
        meta).decode()
    # Every package of the source tree is listed in setup.cfg (and so is in the wheel).
    packages = {os.path.relpath(d, ROOT).replace(os.sep, ".")
                for d, _, files in os.walk(os.path.join(ROOT, "supsup_jax"))
                if "__init__.py" in files}
    shipped = {os.path.dirname(n).replace("/", ".") for n in names
               if n.endswith("/__init__.py")}
    assert packages | {"supsup_jax.configs"} == shipped


def test_installed_wheel_runs_a_named_config_outside_the_checkout(wheel, tmp_path,
                                                                  fashion_mnist):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import supsup_jax, supsup_jax.runner.cli as c; "
            "print(supsup_jax.__file__); print(c.configs_package().__name__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.split() == [str(target / "supsup_jax" / "__init__.py"),
                                "supsup_jax.configs"], r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "supsup_jax.runner.cli",
                        "--config=main_fashion:tiny", f"--workdir={tmp_path / 'run'}",
                        "--config.num_tasks=1"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").exists()
