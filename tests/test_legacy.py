"""Importing the legacy orchestrator's confluence.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from confluence import config as config_mod
from confluence.cli import build_parser
from confluence.legacy import NOT_VALID, import_legacy
from confluence.legacy import cli as legacy_cli

DATA = Path(__file__).parent / "data"
LEGACY_2021 = yaml.safe_load((DATA / "confluence_2021.yaml").read_text())


@pytest.fixture(scope="module")
def imported():
    return import_legacy(LEGACY_2021)


def merged(fragment: dict) -> dict:
    return config_mod.load(overrides=fragment)


def test_2021_file_maps_stages_modules_and_scopes(imported):
    fragment, notes = imported
    modules = fragment["modules"]
    assert list(modules) == [
        "priors",
        "prediagnostics",
        "geobam",
        "hivdi",
        "metroman",
        "momma",
        "sad",
        "sic4dvar",
        "moi",
        "validation",
        "output",
    ]
    expected = {
        "prediagnostics": ("prediagnostics", "reach"),
        "geobam": ("flpe", "reach"),
        "metroman": ("flpe", "set"),
        "moi": ("moi", "basin"),
        "priors": ("priors", "continent"),
        "output": ("output", "continent"),
        "validation": ("validation", "continent"),
    }
    for name, (stage, scope) in expected.items():
        assert (modules[name]["stage"], modules[name]["scope"]) == (stage, scope), name
        assert modules[name]["worklist"] == config_mod.SCOPE_WORKLIST[scope]
    assert fragment["run"] == {"run_type": "constrained"}
    assert "flpe" not in fragment  # same six algorithms as the defaults
    assert not any(n.startswith(NOT_VALID) for n in notes)


def test_arguments_become_placeholders(imported):
    modules = imported[0]["modules"]
    assert modules["geobam"]["arguments"] == ["{worklist}"]
    assert modules["metroman"]["arguments"] == ["{worklist}"]
    assert modules["output"]["arguments"] == ["{worklist}", "{run_type}"]
    # priors took no work list in 2021: it is added, the rest is kept
    assert modules["priors"]["arguments"] == [
        "{worklist}",
        "{run_type}",
        "grdc",
        "usgs",
        "gbpriors",
    ]
    assert modules["hivdi"]["arguments"] == ["{worklist}"]


def test_notes_say_what_was_not_mapped_and_why(imported):
    notes = "\n".join(imported[1])
    assert "log_file: '/mnt/data/logs/confluence.log' not needed" in notes
    assert "submission_file:" in notes
    assert (
        "stages.flpe.metroman: num_jobs 1, array_size 8 not needed: the plan sizes the jobs"
        in notes
    )
    assert "stages.validation.validation: num_jobs 1, array_size 0 not needed" in notes
    assert "stages.flpe.hivdi: no work-list argument; scope reach kept from the defaults" in notes
    assert "stages.validation.validation: scope continent differs from the defaults' reach" in notes
    for name in ("input", "postdiagnostics_flpe", "postdiagnostics_moi", "offline"):
        assert f"modules.{name}: not in the legacy file; kept from the defaults" in notes


def test_merged_over_the_defaults_it_validates(imported):
    config = merged(imported[0])
    assert config["modules"]["validation"]["scope"] == "continent"
    assert config["modules"]["validation"]["outputs"] == []
    assert config["modules"]["geobam"]["memory_mib"] == 8192  # resources from the defaults
    assert config["run"]["run_type"] == "constrained"


def test_unknown_modules_get_a_full_entry():
    legacy = {
        "stages": {
            "flpe": {
                "neobam": {"num_jobs": 1, "array_size": 41, "arguments": ["reaches.json"]},
                "momma": {"array_size": 41, "arguments": ["reaches.json"]},
            },
            "consensus": {"Consensus-Q": {"array_size": 5, "arguments": ["basin.json", "x"]}},
        }
    }
    fragment, notes = import_legacy(legacy)
    neobam = fragment["modules"]["neobam"]
    assert neobam["stage"] == "flpe" and neobam["scope"] == "reach"
    assert neobam["image"] == "confluence-neobam:latest"
    assert neobam["outputs"] == ["/mnt/data/output/{reach_id}_neobam.nc"]
    assert {"filesystem": "flpe", "subpath": "neobam", "path": "/mnt/data/output"} in neobam[
        "mounts"
    ]
    consensus = fragment["modules"]["consensus_q"]
    assert consensus["scope"] == "basin" and consensus["arguments"] == ["{worklist}", "x"]
    assert fragment["flpe"] == {"algorithms": ["neobam", "momma"]}
    text = "\n".join(notes)
    assert "stages.flpe.neobam: not a module of the defaults; added with image" in text
    assert "stages.consensus.Consensus-Q: renamed to module 'consensus_q'" in text
    config = merged(fragment)
    assert config["flpe"]["algorithms"] == ["neobam", "momma"]
    assert config["modules"]["neobam"]["vcpu"] == 1  # schema default


def test_conflicting_run_types_are_reported():
    legacy = {
        "stages": {
            "priors": {"priors": {"arguments": ["unconstrained"]}},
            "output": {"output": {"arguments": ["continent.json", "constrained"]}},
        }
    }
    fragment, notes = import_legacy(legacy)
    assert fragment["run"]["run_type"] == "unconstrained"
    assert fragment["modules"]["output"]["arguments"] == ["{worklist}", "constrained"]
    assert any("run type 'constrained' differs from 'unconstrained'" in n for n in notes)


def test_unknown_keys_and_bad_settings_are_reported():
    legacy = {"stages": {"moi": {"moi": {"arguments": ["basin.json"], "memory": 4}}}, "queue": "x"}
    fragment, notes = import_legacy(legacy)
    assert "queue: unknown key of the legacy file, ignored" in notes
    assert "stages.moi.moi.memory: unknown setting, ignored" in notes
    with pytest.raises(ValueError, match="no 'stages' mapping"):
        import_legacy({"log_file": "x"})


def test_a_fragment_that_cannot_validate_says_so():
    # a known module whose scope changes loses the defaults' outputs and stays valid
    legacy = {"stages": {"flpe": {"geobam": {"arguments": ["continent.json"]}}}}
    fragment, notes = import_legacy(legacy)
    assert fragment["modules"]["geobam"]["outputs"] == []
    assert not any(n.startswith(NOT_VALID) for n in notes)
    defaults = config_mod.load()
    # without an flpe file system the new module's own mount cannot validate
    defaults["filesystems"] = ["input"]
    fragment, notes = import_legacy({"stages": {"flpe": {"neobam": {}}}}, defaults=defaults)
    assert any(n.startswith(NOT_VALID) and "neobam.mounts.1.filesystem" in n for n in notes)


def test_cli_writes_a_config_that_validates(tmp_path, capsys):
    out = tmp_path / "imported.yaml"
    args = build_parser().parse_args(
        ["import-legacy", str(DATA / "confluence_2021.yaml"), "-o", str(out)]
    )
    assert legacy_cli(args) == 0
    printed = capsys.readouterr().out
    assert "array_size 41 not needed" in printed
    assert f"wrote {out} (11 modules)" in printed
    text = out.read_text()
    assert text.startswith("# Imported from the legacy orchestrator's confluence_2021.yaml")
    config = config_mod.load([str(out)])
    assert config["modules"]["metroman"]["scope"] == "set"


def test_cli_reports_bad_files(tmp_path, capsys):
    args = build_parser().parse_args(
        ["import-legacy", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o.yaml")]
    )
    assert legacy_cli(args) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [1, 2]\n")
    args = build_parser().parse_args(["import-legacy", str(bad), "-o", str(tmp_path / "o.yaml")])
    assert legacy_cli(args) == 2
    assert "no 'stages' mapping" in capsys.readouterr().err
