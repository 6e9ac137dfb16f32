"""Packaging: environment.yml agrees with pyproject.toml; the console script is declared."""
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    got = [p for p in pip if not p.startswith("-e")]
    assert sorted(got) == sorted(want)
    assert got[0] == "torch==2.13.0"  # torch first, pinned
    assert any(str(d).startswith("python=3.") for d in env["dependencies"])
    assert "-e ." in pip


def test_console_script_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["fromage-mini"] == "fromage_mini.cli:main"


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in readme and "make test" in ci


def test_ruff_is_clean():
    """The style rules in pyproject.toml hold for the whole tree (``make lint`` runs the same check)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
