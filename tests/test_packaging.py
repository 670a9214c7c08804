"""pyproject.toml and environment.yml must install the same things."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(requirement: str) -> str:
    return requirement.strip().lower().replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pip_side = project["dependencies"] + [dep for deps in extras.values() for dep in deps]
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_side = [d for d in conda if isinstance(d, str) and _name(d) not in ("python", "pip")]
    assert sorted(map(_spec, pip_side)) == sorted(map(_spec, conda_side))


def test_environment_installs_the_package_and_pins_python():
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    assert "python=3.11" in conda
    pip_entries = next(d["pip"] for d in conda if isinstance(d, dict))
    assert "-e ." in pip_entries


def test_console_command_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"confluence": "confluence.cli:main"}
