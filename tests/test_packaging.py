"""The project's dependencies: no compromised release admitted, today's majors not capped away."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# releases on the package index that ran malicious code at import (docs/security.md)
COMPROMISED = {"lightning": ["2.6.2", "2.6.3"], "pytorch-lightning": ["2.6.2", "2.6.3"]}
# today's major releases, which every floor and cap must admit
TODAYS_MAJORS = {
    "transformers": "5.0",
    "optuna": "5.0",
    "datasets": "5.0",
    "pandas": "3.0",
    "numpy": "2.0",
    "lightning": "2.6.6",
    "mlflow": "3.0",
}


def requirements():
    """(where, Requirement) for the core dependencies and every extra."""
    found = [("dependencies", Requirement(r)) for r in PROJECT["dependencies"]]
    for extra, listed in PROJECT["optional-dependencies"].items():
        found += [(f"[{extra}]", Requirement(r)) for r in listed]
    return found


def test_no_requirement_admits_a_compromised_release():
    for where, requirement in requirements():
        for version in COMPROMISED.get(requirement.name.lower(), []):
            assert not requirement.specifier.contains(version, prereleases=True), (
                f"{where}: {requirement} admits the compromised {requirement.name} {version}"
            )


def test_every_requirement_admits_todays_major_release():
    for where, requirement in requirements():
        major = TODAYS_MAJORS.get(requirement.name.lower())
        if major is not None:
            assert requirement.specifier.contains(major), f"{where}: {requirement} caps away {major}"


def test_the_installed_versions_satisfy_the_requirements():
    """What `make dev` installed from these extras satisfies each (a floor that is real)."""
    from importlib.metadata import PackageNotFoundError, version

    for where, requirement in requirements():
        if where == "[bench]":
            continue  # the peers' extra is installed by hand for `make bench`
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            pytest.fail(f"{where}: {requirement.name} is not installed; `make dev` installs every extra")
        assert requirement.specifier.contains(Version(installed).base_version, prereleases=True), (
            f"{where}: {requirement.name} {installed} does not satisfy {requirement}"
        )


PIP_DRY_RUN = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report"]


@pytest.mark.slow
def test_the_extras_resolve_to_todays_majors_and_never_to_a_compromised_release(tmp_path):
    """pip resolves every extra's requirements together, as a fresh install would."""
    listed = sorted({str(r) for where, r in requirements() if where not in ("[bench]", "[docs]")})
    report = tmp_path / "report.json"
    done = subprocess.run(
        [*PIP_DRY_RUN, str(report), "torch==2.13.0", *listed],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for name, versions in COMPROMISED.items():
        assert resolved.get(name) not in versions
    for name, major in TODAYS_MAJORS.items():
        if name in resolved:
            assert Version(resolved[name]) >= Version(major), f"{name} resolved to {resolved[name]}"


def test_no_source_file_is_left_out_of_git_by_gitignore():
    # A pattern like "runs/" once matched src/torchhouse/runs/ too: its new modules were never
    # committed, and a clean clone could not import the package.
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (a source distribution): nothing for .gitignore to leave out")
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "src", "tests", "docs",
         "examples", "scripts", "benchmarks", ".ci"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    built = ("__pycache__", ".egg-info/")  # what an install or an import writes beside the sources
    ignored = [p for p in listed if not any(b in p for b in built) and not p.endswith((".pyc", ".tmp"))]
    ignored = [p for p in ignored if not p.startswith("benchmarks/results/latest")]
    assert not ignored, f".gitignore leaves these project files out of git: {ignored[:10]}"
