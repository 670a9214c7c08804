"""Shared fixtures: a tiny synthetic domain written to temporary directories.

For engineers writing module tests (real files, no mocks):

- ``synthetic_spec``: the config ``domain`` section of the tiny domain (two continents, na
  and eu, a few basins of 4-8 reaches, 120 days, noise on, one faulty reach per continent).
- ``synthetic_inputs`` (session): the generated input file system (sword/, sos/previous/,
  gage/, swot_raw/) and the truth, as a ``SyntheticDomain``. Read-only: copy before writing.
- ``prepared_inputs`` (session): the same after the input module ran for every reach
  (swot/{reach_id}_SWOT.nc; faulty reaches included, they have 1-3 observations) and the
  priors module for every continent (sos/{c}_sword_v16_SOS_priors.nc). Read-only too.
- ``input_fs`` / ``prepared_input_fs``: a fresh copy of one of them in ``tmp_path`` for one
  test, to be used as the mount root R (input, priors) or as R/input (later modules).
- ``make_worklists``: ``make_worklists(directory, reach_ids)`` writes reaches.json,
  sets.json, basin.json and continent.json in the contract format into ``directory``.

``SyntheticDomain`` has ``root`` (the input file system), ``truth_dir``, ``spec``,
``continents``, ``summaries`` (what ``synthetic.generate`` returned per continent),
``reach_ids(continent)`` and ``truth(continent)``.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from confluence import contract, synthetic
from confluence.plan import basin_item, reach_item

TINY_SPEC = {
    "kind": "synthetic",
    "seed": 11,
    "continents": {
        "eu": {"basins": 1, "reaches_per_basin": [5, 7]},
        "na": {"basins": 2, "reaches_per_basin": [4, 8]},
    },
    "observations": True,
    "start": "2023-07-26",
    "days": 120,
    "gauge_fraction": 0.4,
    "noise": True,
    "faulty_reaches": 1,
}


@dataclass
class SyntheticDomain:
    root: Path
    truth_dir: Path
    spec: dict
    summaries: dict[str, dict]

    @property
    def continents(self) -> list[str]:
        return list(self.summaries)

    def reach_ids(self, continent: str) -> list[int]:
        return [int(r) for r in self.truth(continent).reach_id]

    def truth(self, continent: str) -> synthetic.Truth:
        return synthetic.read_truth(self.truth_dir / synthetic.truth_name(continent))


def write_worklists(directory: Path, reach_ids) -> Path:
    """The four work lists of these reaches (one set per reach, basins by ID prefix)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reach_ids = sorted(int(r) for r in reach_ids)
    basins: dict[int, list[int]] = {}
    for rid in reach_ids:
        basins.setdefault(contract.basin_of(rid), []).append(rid)
    continents = []
    for rid in reach_ids:
        code = contract.continent_of(rid)
        if code not in continents:
            continents.append(code)
    lists = {
        "reaches.json": [reach_item(r) for r in reach_ids],
        "sets.json": [[reach_item(r)] for r in reach_ids],
        "basin.json": [basin_item(basin, ids) for basin, ids in basins.items()],
        "continent.json": [{c: contract.CONTINENTS[c]} for c in continents],
    }
    for name, items in lists.items():
        (directory / name).write_text(json.dumps(items, indent=1))
    return directory / "reaches.json"


@pytest.fixture(scope="session")
def synthetic_spec() -> dict:
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture(scope="session")
def synthetic_inputs(tmp_path_factory, synthetic_spec) -> SyntheticDomain:
    base = tmp_path_factory.mktemp("synthetic")
    root, truth_dir = base / "input", base / "truth"
    summaries = {
        c: synthetic.generate(synthetic_spec, c, root, truth_dir)
        for c in synthetic_spec["continents"]
    }
    return SyntheticDomain(root, truth_dir, synthetic_spec, summaries)


@pytest.fixture(scope="session")
def prepared_inputs(tmp_path_factory, synthetic_inputs) -> SyntheticDomain:
    from confluence.modules import input as input_module
    from confluence.modules import priors as priors_module

    base = tmp_path_factory.mktemp("prepared")
    root = base / "input"
    shutil.copytree(synthetic_inputs.root, root)
    ids = [r for c in synthetic_inputs.continents for r in synthetic_inputs.reach_ids(c)]
    write_worklists(root / "worklists" / "all", ids)
    for index in range(len(ids)):
        input_module.run("worklists/all/reaches.json", index, root, [])
    for index in range(len(synthetic_inputs.continents)):
        priors_module.run("worklists/all/continent.json", index, root, ["constrained"])
    return SyntheticDomain(
        root, synthetic_inputs.truth_dir, synthetic_inputs.spec, synthetic_inputs.summaries
    )


@pytest.fixture
def input_fs(tmp_path, synthetic_inputs) -> Path:
    target = tmp_path / "input"
    shutil.copytree(synthetic_inputs.root, target)
    return target


@pytest.fixture
def prepared_input_fs(tmp_path, prepared_inputs) -> Path:
    target = tmp_path / "input"
    shutil.copytree(prepared_inputs.root, target)
    return target


@pytest.fixture(scope="session")
def make_worklists():
    return write_worklists
