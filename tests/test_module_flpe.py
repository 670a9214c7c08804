"""The FLPE modules through the real CLI, on a mount tree of real NetCDF files (the shared
tiny synthetic domain after the input and priors modules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from confluence import cli, contract, ncio
from confluence.modules import prediagnostics
from confluence.science import flowlaws

WORKLISTS = "worklists/all"
REACHES = f"{WORKLISTS}/reaches.json"
ALGORITHMS = ("geobam", "hivdi", "momma", "sad", "sic4dvar")


@pytest.fixture
def root(tmp_path, prepared_input_fs, monkeypatch) -> Path:
    """Mount root R with R/input (a fresh copy of the prepared inputs) and R/output."""
    assert prepared_input_fs == tmp_path / "input"
    (tmp_path / "output").mkdir()
    monkeypatch.setenv(contract.MOUNT_ROOT_ENV, str(tmp_path))
    monkeypatch.delenv(contract.ARRAY_INDEX_ENV, raising=False)
    return tmp_path


def reach_list(root: Path) -> list[dict]:
    return json.loads((root / "input" / REACHES).read_text())


def observation_count(root: Path, rid: int) -> int:
    swot = ncio.read_swot(root / "input" / "swot" / contract.swot_name(rid))
    return int(np.isfinite(swot.width).sum())


def well_observed(root: Path) -> list[int]:
    """Indices of reaches with plenty of observations."""
    return [
        i
        for i, item in enumerate(reach_list(root))
        if observation_count(root, item["reach_id"]) >= 12
    ]


def module(name: str, *args: str) -> int:
    return cli.main(["module", name, *args])


def test_momma_writes_its_result_in_the_layout(root):
    index = well_observed(root)[0]
    rid = reach_list(root)[index]["reach_id"]
    assert module("momma", "-i", str(index), REACHES) == 0
    written = list((root / "output").iterdir())
    assert [p.name for p in written] == [f"{rid}_momma.nc"]
    (result,) = ncio.read_flpe(written[0])
    assert (result.reach_id, result.algorithm, result.flow_law) == (rid, "momma", "momma")
    swot = ncio.read_swot(root / "input" / "swot" / contract.swot_name(rid))
    np.testing.assert_array_equal(result.time, swot.time)
    q = flowlaws.discharge("momma", result.params, swot.width, swot.slope2, swot.d_x_area, swot.wse)
    seen = np.isfinite(result.q)
    np.testing.assert_allclose(result.q[seen], q[seen], rtol=1e-12)
    assert seen.sum() >= 5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_reach_algorithm_runs_through_the_cli(root, algorithm):
    index = well_observed(root)[1]
    rid = reach_list(root)[index]["reach_id"]
    assert module(algorithm, "-i", str(index), REACHES) == 0
    (result,) = ncio.read_flpe(root / "output" / f"{rid}_{algorithm}.nc")
    assert set(result.params) == set(flowlaws.PARAMETERS[result.flow_law])
    assert np.all(np.isfinite(list(result.params.values())))
    assert np.isfinite(result.q).sum() >= 5


def test_index_comes_from_the_batch_environment(root, monkeypatch):
    index = well_observed(root)[2]
    rid = reach_list(root)[index]["reach_id"]
    monkeypatch.setenv(contract.ARRAY_INDEX_ENV, str(index))
    assert module("sad", "-i", "-235", REACHES) == 0
    assert module("geobam", REACHES) == 0
    names = sorted(p.name for p in (root / "output").iterdir())
    assert names == [f"{rid}_geobam.nc", f"{rid}_sad.nc"]


def test_reach_with_too_few_observations_fails_naming_it(root, prepared_inputs, capsys):
    faulty = {r for s in prepared_inputs.summaries.values() for r in s["faulty_reaches"]}
    index, rid = next(
        (i, it["reach_id"]) for i, it in enumerate(reach_list(root)) if it["reach_id"] in faulty
    )
    assert observation_count(root, rid) < 5
    assert module("momma", "-i", str(index), REACHES) == 1
    err = capsys.readouterr().err
    assert f"reach {rid}: only" in err and "momma needs at least 5" in err
    assert not list((root / "output").iterdir())


def test_missing_prediagnostics_file_is_upstream_missing(root, capsys):
    (root / "prediagnostics").mkdir()  # the mount exists, the reach's flags do not
    index = well_observed(root)[0]
    rid = reach_list(root)[index]["reach_id"]
    assert module("hivdi", "-i", str(index), REACHES) == contract.EXIT_UPSTREAM_MISSING
    err = capsys.readouterr().err
    assert f"reach {rid}" in err and f"{rid}_prediagnostics.nc" in err
    assert not list((root / "output").iterdir())


def test_prediagnostics_flags_are_respected(root):
    index = well_observed(root)[0]
    rid = reach_list(root)[index]["reach_id"]
    # The real prediagnostics module writes the flags into its own output mount.
    flags_root = root / "pre"
    (flags_root / "output").mkdir(parents=True)
    (flags_root / "input").symlink_to(root / "input", target_is_directory=True)
    prediagnostics.run(REACHES, index, flags_root, [])
    (root / "prediagnostics").symlink_to(flags_root / "output", target_is_directory=True)
    flags = prediagnostics_valid(root / "prediagnostics" / f"{rid}_prediagnostics.nc")
    assert module("sic4dvar", "-i", str(index), REACHES) == 0
    (result,) = ncio.read_flpe(root / "output" / f"{rid}_sic4dvar.nc")
    np.testing.assert_array_equal(np.isfinite(result.q), flags)


def test_rejected_observations_are_left_out(root):
    """Flags written by hand: exactly the kept observations get a discharge."""
    index = well_observed(root)[0]
    rid = reach_list(root)[index]["reach_id"]
    swot = ncio.read_swot(root / "input" / "swot" / contract.swot_name(rid))
    keep = np.isfinite(swot.width)
    keep[np.flatnonzero(keep)[:3]] = False
    (root / "prediagnostics").mkdir()
    with ncio.create_dataset(root / "prediagnostics" / f"{rid}_prediagnostics.nc") as ds:
        ds.createDimension("nt", swot.nt)
        ds.createVariable("valid", "i1", ("nt",))[...] = keep.astype(np.int8)
    assert module("geobam", "-i", str(index), REACHES) == 0
    (result,) = ncio.read_flpe(root / "output" / f"{rid}_geobam.nc")
    np.testing.assert_array_equal(np.isfinite(result.q), keep)


def prediagnostics_valid(path: Path) -> np.ndarray:
    with ncio.open_dataset(path, "prediagnostics") as ds:
        return np.asarray(ds.variables["valid"][...]) == 1


def test_metroman_writes_one_file_per_set(root, prepared_inputs):
    # An inversion set: a reach and the reach downstream of it, both well observed.
    truth = prepared_inputs.truth("na")
    good = {reach_list(root)[i]["reach_id"] for i in well_observed(root)}
    pair = next(
        [int(r), int(d)]
        for r, d in zip(truth.reach_id, truth.reach_dn, strict=True)
        if r in good and d in good
    )
    items = [it for it in reach_list(root) if it["reach_id"] in pair]
    sets = root / "input" / WORKLISTS / "sets.json"
    sets.write_text(json.dumps([[items[0]], items]))
    assert module("metroman", "-i", "1", f"{WORKLISTS}/sets.json") == 0
    path = root / "output" / f"{contract.set_id(it['reach_id'] for it in items)}_metroman.nc"
    results = ncio.read_flpe(path)
    assert [r.reach_id for r in results] == [it["reach_id"] for it in items]
    for result in results:
        assert result.flow_law == "metroman" and set(result.params) == {"A0", "na", "x1"}
        assert np.isfinite(result.q).sum() >= 6


def test_metroman_set_leaves_out_a_faulty_reach_naming_it(root, prepared_inputs):
    faulty = {r for s in prepared_inputs.summaries.values() for r in s["faulty_reaches"]}
    items = reach_list(root)
    bad = next(it for it in items if it["reach_id"] in faulty)
    good = items[well_observed(root)[0]]
    (root / "input" / WORKLISTS / "sets.json").write_text(json.dumps([[good, bad]]))
    with pytest.warns(UserWarning, match=f"reach {bad['reach_id']}: only"):
        assert module("metroman", "-i", "0", f"{WORKLISTS}/sets.json") == 0
    path = root / "output" / ncio.flpe_name("metroman", [good["reach_id"], bad["reach_id"]])
    assert [r.reach_id for r in ncio.read_flpe(path)] == [good["reach_id"]]


def test_missing_swot_file_is_upstream_missing(root):
    index = well_observed(root)[0]
    rid = reach_list(root)[index]["reach_id"]
    (root / "input" / "swot" / contract.swot_name(rid)).unlink()
    assert module("sad", "-i", str(index), REACHES) == contract.EXIT_UPSTREAM_MISSING


def test_unexpected_arguments_fail(root, capsys):
    assert module("momma", "-i", "0", REACHES, "constrained") == 1
    assert "unexpected arguments constrained" in capsys.readouterr().err
