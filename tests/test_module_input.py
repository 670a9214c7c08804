"""The input module through the container contract: work list, index, mount root."""

from __future__ import annotations

import os
import subprocess
import sys

import netCDF4
import numpy as np
import pytest

from confluence import cli, contract, ncio
from confluence.modules import input as input_module

WORKLIST = "worklists/na_test/reaches.json"


@pytest.fixture
def mount(input_fs, synthetic_inputs, make_worklists, monkeypatch):
    """The input file system as the mount root, with a work list of na's reaches."""
    ids = synthetic_inputs.reach_ids("na")
    make_worklists(input_fs / "worklists" / "na_test", ids)
    monkeypatch.setenv(contract.MOUNT_ROOT_ENV, str(input_fs))
    monkeypatch.delenv(contract.ARRAY_INDEX_ENV, raising=False)
    return input_fs, ids


def granule_rows(root, reach_id):
    """The reach's records straight from the granules: (time, wse, node count) per record."""
    rows = []
    for path in sorted((root / "swot_raw" / contract.continent_of(reach_id)).glob("*.nc")):
        g = ncio.read_granule(path, reach_id)
        if g.reach_id.size:
            rows.append((g.reach["time"][0], g.reach["wse"][0], g.node_id.size))
    return sorted(rows)


def test_index_argument_writes_the_reach_file_in_the_contract_layout(mount, synthetic_inputs):
    root, ids = mount
    truth = synthetic_inputs.truth("na")
    index = int(np.flatnonzero(~truth.faulty)[1])
    assert cli.main(["module", "input", "-i", str(index), WORKLIST]) == 0
    rid = ids[index]
    path = root / "swot" / contract.swot_name(rid)
    assert sorted(p.name for p in (root / "swot").iterdir()) == [path.name]
    swot = ncio.read_swot(path)
    expected = granule_rows(root, rid)
    assert swot.reach_id == rid and swot.nt == len(expected) >= 4
    assert np.array_equal(swot.time, [t for t, _, _ in expected])
    assert np.array_equal(swot.wse, [w for _, w, _ in expected], equal_nan=True)
    assert (np.diff(swot.time) > 0).all()
    assert swot.time_str == ncio.time_to_str(swot.time)
    sword = ncio.read_sword(root / "sword" / "na_sword_v16.nc")
    assert np.array_equal(swot.node_id, np.sort(sword.nodes_of(rid)))
    assert swot.node["wse"].shape == (swot.node_id.size, swot.nt)
    # Node times are the reach's observation times wherever a node was observed.
    node_time = swot.node["time"]
    assert np.allclose(node_time, swot.time[None, :])
    with netCDF4.Dataset(path) as ds:
        assert set(ds.dimensions) == {"nt", "nx"} and set(ds.groups) == {"reach", "node"}
        assert {"time", "time_str", *ncio.SWOT_REACH_VARS} <= set(ds["reach"].variables)


@pytest.mark.parametrize("index_args", [["-i", "-235"], []], ids=["minus-235", "no-index"])
def test_array_index_from_the_environment(mount, monkeypatch, index_args):
    root, ids = mount
    monkeypatch.setenv(contract.ARRAY_INDEX_ENV, "1")
    assert cli.main(["module", "input", *index_args, WORKLIST]) == 0
    assert (root / "swot" / contract.swot_name(ids[1])).exists()
    assert not (root / "swot" / contract.swot_name(ids[0])).exists()


def test_as_a_separate_process(mount):
    root, ids = mount
    env = {**os.environ, contract.MOUNT_ROOT_ENV: str(root), contract.ARRAY_INDEX_ENV: "0"}
    result = subprocess.run(
        [sys.executable, "-m", "confluence.cli", "module", "input", "-i", "-235", WORKLIST],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert ncio.read_swot(root / "swot" / contract.swot_name(ids[0])).reach_id == ids[0]


def test_faulty_reach_gets_its_few_observations(mount, synthetic_inputs):
    root, ids = mount
    truth = synthetic_inputs.truth("na")
    (faulty,) = truth.reach_id[truth.faulty]
    index = ids.index(int(faulty))
    assert cli.main(["module", "input", "-i", str(index), WORKLIST]) == 0
    assert 1 <= ncio.read_swot(root / "swot" / contract.swot_name(faulty)).nt < 4


def test_reach_without_observations_fails_naming_it(mount, make_worklists, capsys):
    root, _ = mount
    unseen = 71230000011  # a North American reach no pass saw
    make_worklists(root / "worklists" / "unseen", [unseen])
    code = cli.main(["module", "input", "-i", "0", "worklists/unseen/reaches.json"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"reach {unseen}: no SWOT observations" in err
    assert not (root / "swot").exists()


def test_missing_granules_and_bad_index_are_item_errors(mount, make_worklists, capsys):
    root, _ = mount
    make_worklists(root / "worklists" / "af", [11230000011])
    with pytest.raises(contract.ItemError, match="no raw SWOT granules"):
        input_module.run("worklists/af/reaches.json", 0, root, [])
    assert cli.main(["module", "input", "-i", "999", WORKLIST]) == 1
    assert "index 999 is out of range" in capsys.readouterr().err
    assert cli.main(["module", "input", "-i", "-3", WORKLIST]) == 2


def test_corrupt_granule_fails_naming_it(mount):
    root, ids = mount
    granule = sorted((root / "swot_raw" / "na").glob("*.nc"))[0]
    granule.write_bytes(granule.read_bytes()[:200])
    with pytest.raises(contract.ItemError, match=str(granule)):
        input_module.run(WORKLIST, 0, root, [])


def test_prepared_inputs_hold_every_reach_and_the_new_sos(prepared_inputs):
    """The shared fixture downstream module tests start from (see conftest.py)."""
    root = prepared_inputs.root
    for continent in prepared_inputs.continents:
        truth = prepared_inputs.truth(continent)
        for rid, faulty in zip(truth.reach_id, truth.faulty, strict=True):
            swot = ncio.read_swot(root / "swot" / contract.swot_name(rid))
            assert (swot.nt < 4) == faulty
        sos = ncio.read_sos(root / "sos" / contract.sos_priors_name(continent))
        assert sos.attrs["run_type"] == "constrained" and sos.gauges
