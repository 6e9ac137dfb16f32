"""Packaging: the course lock, environment.yml and pyproject.toml agree; the wheel carries the samples."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "course.lock"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$")
EXTRAS = ("dev", "photos", "cc3m")  # what the Makefile's course venv installs


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            m = PIN.match(line)
            assert m, f"course.lock: not a plain pin: {line!r}"
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_lock_pins_every_requirement_within_pyproject_ranges():
    pins, project = _lock_pins(), _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for e in EXTRAS for r in project["optional-dependencies"][e]]
    for r in reqs:
        name = canonicalize_name(r.name)
        assert name in pins, f"{r.name} is required but not in the lock (run make lock)"
        assert r.specifier.contains(pins[name], prereleases=True), f"lock pins {r.name}=={pins[name]}, outside {r}"
    assert len(pins) > len(reqs)  # transitive dependencies are pinned too
    assert pins["torch"] == "2.13.0"  # no local build label: the same line works on any machine


def test_lock_names_no_machine():
    text = LOCK.read_text()
    assert "--index-url" not in text and "--find-links" not in text and "--extra-index-url" not in text
    assert not re.search(r"(^|\s)/(root|home|Users|opt|tmp)/", text), "an absolute path in the lock"


def test_environment_yml_pins_exactly_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    got = {}
    for line in pip:
        if line.startswith("-e"):
            continue
        m = PIN.match(line)
        assert m, f"environment.yml: not an exact pin: {line!r}"
        got[canonicalize_name(m[1])] = m[2]
    assert got == _lock_pins()
    assert "python=3.11" in env["dependencies"]  # the Python the lock was resolved for
    assert "-e ." in pip


def test_pyproject_keeps_ranges_not_pins():
    project = _project()
    reqs = project["dependencies"] + [r for v in project["optional-dependencies"].values() for r in v]
    pinned = [r for r in reqs if "==" in r]
    assert not pinned, f"pin versions in requirements/course.lock, not pyproject.toml: {pinned}"


def test_makefile_installs_from_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert "-r $(LOCK)" in make and "LOCK    := requirements/course.lock" in make
    assert "\nlock:" in make and "\ntest-latest:" in make


def test_every_subpackage_goes_into_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fromage_mini").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "fromage_mini.data_samples" in listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    import shutil

    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):  # a copy, so the build leaves nothing in the checkout
        shutil.copy(ROOT / name, src / name)
    for name in ("fromage_mini", "data_samples"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("fromage_mini-*.whl"))


def test_wheel_carries_the_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("toy_lm/config.json", "toy_clip/model.safetensors", "toy_fromage/adapters.safetensors",
              "shapesworld/train.tsv", "shapesworld/val.tsv"):
        assert f"fromage_mini/data_samples/{f}" in names, f
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "data_samples").rglob("*") if p.is_file()}
    assert {"fromage_mini/" + s for s in shipped} <= names


def test_installed_wheel_finds_its_samples_from_anywhere(wheel, tmp_path):
    """Unpacked (as pip installs it) and run from an unrelated folder: samples from the package, caches
    under FROMAGE_MINI_CACHE, nothing written to the working directory."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    code = ("from fromage_mini import paths; import fromage_mini.toyworld as t; "
            "print(paths.resolve('data_samples/toy_lm')); print(paths.resolve('cache:features')); print(t.TOY_LM)")
    env = {"PYTHONPATH": str(site), "FROMAGE_MINI_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lm, cache, toy = r.stdout.split()
    assert Path(lm) == site / "fromage_mini/data_samples/toy_lm" == Path(toy)
    assert Path(cache) == tmp_path / "cache" / "features"
    assert list(cwd.iterdir()) == []


def test_missing_samples_say_what_to_do(tmp_path, monkeypatch):
    from fromage_mini import paths
    from fromage_mini.errors import FromageError

    monkeypatch.setenv("FROMAGE_MINI_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FromageError, match="set FROMAGE_MINI_DATA"):
        paths.resolve("data_samples/toy_lm")
    monkeypatch.setenv("FROMAGE_MINI_DATA", str(ROOT / "data_samples"))
    assert Path(paths.resolve("data_samples/toy_lm")) == ROOT / "data_samples" / "toy_lm"


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    from fromage_mini import paths

    monkeypatch.delenv("FROMAGE_MINI_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "fromage_mini"
    monkeypatch.setenv("FROMAGE_MINI_CACHE", str(tmp_path / "mine"))
    assert Path(paths.resolve("cache:features")) == tmp_path / "mine" / "features"
    assert paths.resolve("facebook/opt-125m") == "facebook/opt-125m"  # hub names pass through


def test_console_script_declared():
    project = _project()
    assert project["scripts"]["fromage-mini"] == "fromage_mini.cli:main"


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in readme and "make test" in ci


def test_ruff_is_clean():
    """The style rules in pyproject.toml hold for the whole tree (``make lint`` runs the same check)."""
    import shutil

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:]


def test_docs_name_only_real_subcommands():
    """Every ``fromage-mini <word>`` in README, docs/ and the notebooks' README is a subcommand of the CLI."""
    from fromage_mini.cli import COMMANDS

    texts = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {(p.name, m[1]) for p in texts for m in re.finditer(r"\bfromage-mini ([a-z][a-z0-9-]*)", p.read_text())}
    wrong = sorted(f"{file}: fromage-mini {cmd}" for file, cmd in named if cmd not in COMMANDS)
    assert named and not wrong, f"not subcommands ({', '.join(COMMANDS)}): {wrong}"
