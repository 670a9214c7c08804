"""The priors module (new SoS version per continent) and the gauge statistics behind it."""

from __future__ import annotations

import hashlib

import netCDF4
import numpy as np
import pytest

from confluence import cli, contract, ncio
from confluence.modules import priors as priors_module
from confluence.science import priors as science

CONTINENTS = "worklists/all/continent.json"


@pytest.fixture
def mount(input_fs, synthetic_inputs, make_worklists, monkeypatch):
    ids = [r for c in synthetic_inputs.continents for r in synthetic_inputs.reach_ids(c)]
    make_worklists(input_fs / "worklists" / "all", ids)
    monkeypatch.setenv(contract.MOUNT_ROOT_ENV, str(input_fs))
    monkeypatch.delenv(contract.ARRAY_INDEX_ENV, raising=False)
    return input_fs


def continent_index(root, continent):
    items = contract.read_worklist(root / CONTINENTS)
    return [next(iter(item)) for item in items].index(continent)


def paths(root, continent):
    name = contract.sos_priors_name(continent)
    return root / "sos" / "previous" / name, root / "sos" / name


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_constrained_run_replaces_model_priors_at_calibration_gauges(mount):
    previous_path, new_path = paths(mount, "na")
    before = digest(previous_path)
    index = continent_index(mount, "na")
    assert cli.main(["module", "priors", "-i", str(index), CONTINENTS, "constrained"]) == 0
    assert digest(previous_path) == before, "the previous SoS version must not change"
    previous, new = ncio.read_sos(previous_path), ncio.read_sos(new_path)
    records = ncio.read_gauges(mount / "gage" / ncio.gauge_file_name("na"))
    assert new.attrs["run_type"] == "constrained"
    assert list(new.gauges) == ["USGS"]
    group = new.gauges["USGS"]
    order = np.argsort(records.reach_id)
    assert np.array_equal(group.reach_id, records.reach_id[order])
    assert np.array_equal(group.cal, records.cal[order])
    assert np.array_equal(group.q, records.q[order], equal_nan=True)
    changed = np.zeros(new.reach_id.size, bool)
    for g, rid in enumerate(group.reach_id):
        row = new.row(rid)
        gauge = new.gauge(rid)
        assert gauge.agency == "USGS" and gauge.cal == bool(group.cal[g])
        stats = science.discharge_statistics(records.q[order][g], records.time)
        if group.cal[g]:
            changed[row] = True
            assert new.model["mean_q"][row] == pytest.approx(np.nanmean(gauge.q))
            assert new.model["max_q"][row] == pytest.approx(np.nanmax(gauge.q))
            assert new.model["two_year_return_q"][row] == pytest.approx(stats["two_year_return_q"])
            np.testing.assert_allclose(new.model["flow_duration_q"][row], stats["flow_duration_q"])
            assert new.gbpriors_reach["logQ_hat"][row] == pytest.approx(np.log(stats["mean_q"]))
        assert group.stats["mean_q"][g] == pytest.approx(stats["mean_q"])
    assert changed.any() and not changed.all()
    for name in ncio.SOS_MODEL_VARS:
        assert np.array_equal(new.model[name][~changed], previous.model[name][~changed])
        assert not np.allclose(new.model[name][changed], previous.model[name][changed])
    for name, values in previous.gbpriors_node.items():
        assert np.array_equal(new.gbpriors_node[name], values)
    assert new.attrs["calibrated_reaches"] == changed.sum()


def test_gauge_priors_are_closer_to_the_truth_than_the_model(mount, synthetic_inputs):
    priors_module.run(CONTINENTS, continent_index(mount, "eu"), mount, ["constrained"])
    previous_path, new_path = paths(mount, "eu")
    previous, new = ncio.read_sos(previous_path), ncio.read_sos(new_path)
    truth = synthetic_inputs.truth("eu")
    group = new.gauges["GRDC"]
    cal = [new.row(r) for r in group.reach_id[group.cal]]
    true_mean = truth.q.mean(axis=1)[cal]
    model_error = np.abs(np.log(previous.model["mean_q"][cal] / true_mean))
    gauge_error = np.abs(np.log(new.model["mean_q"][cal] / true_mean))
    assert np.median(gauge_error) < np.median(model_error)


def test_unconstrained_run_keeps_model_priors_and_writes_gauges_without_calibration(mount):
    for continent in ("na", "eu"):
        index = continent_index(mount, continent)
        assert cli.main(["module", "priors", "-i", str(index), CONTINENTS, "unconstrained"]) == 0
        previous_path, new_path = paths(mount, continent)
        previous, new = ncio.read_sos(previous_path), ncio.read_sos(new_path)
        for name, values in previous.model.items():
            assert np.array_equal(new.model[name], values, equal_nan=True)
        (group,) = new.gauges.values()
        assert group.agency == ("USGS" if continent == "na" else "GRDC")
        assert group.reach_id.size > 0 and not group.cal.any()
        assert new.attrs["run_type"] == "unconstrained"
    with netCDF4.Dataset(new_path) as ds:
        assert {"GRDC_reach_id", "GRDC_q", "GRDC_qt", "CAL"} <= set(ds["GRDC"].variables)
        qt = ds["GRDC/GRDC_qt"][0, :2]
        assert qt[1] - qt[0] == 1 and qt[0] > 730_000  # ordinal day numbers


def test_array_index_and_agency_selection(mount, monkeypatch):
    monkeypatch.setenv(contract.ARRAY_INDEX_ENV, str(continent_index(mount, "na")))
    # Legacy arguments: run type, then sources; GRDC alone leaves na without gauges.
    assert cli.main(["module", "priors", "-i", "-235", CONTINENTS, "constrained", "grdc"]) == 0
    previous_path, new_path = paths(mount, "na")
    new = ncio.read_sos(new_path)
    assert new.gauges == {} and new.attrs["gauge_agencies"] == "none"
    assert np.array_equal(new.model["mean_q"], ncio.read_sos(previous_path).model["mean_q"])
    args = ["module", "priors", CONTINENTS, "constrained", "usgs", "gbpriors"]
    assert cli.main(args) == 0
    assert list(ncio.read_sos(new_path).gauges) == ["USGS"]


def test_argument_and_input_errors(mount, capsys):
    index = str(continent_index(mount, "na"))
    assert cli.main(["module", "priors", "-i", index, CONTINENTS]) == 1
    assert "needs the run type" in capsys.readouterr().err
    assert cli.main(["module", "priors", "-i", index, CONTINENTS, "sometimes"]) == 1
    assert "run type 'sometimes' is not one of" in capsys.readouterr().err
    assert cli.main(["module", "priors", "-i", index, "worklists/all/reaches.json", "x"]) == 1
    assert "is not a continent.json item" in capsys.readouterr().err
    previous_path, new_path = paths(mount, "na")
    previous_path.unlink()
    # Staged input missing: a failure of this item, not a skip because of an upstream one.
    assert cli.main(["module", "priors", "-i", index, CONTINENTS, "constrained"]) == 1
    err = capsys.readouterr().err
    assert "continent na: input missing" in err and str(previous_path) in err
    assert not new_path.exists()


# --- science -------------------------------------------------------------------------------


def test_flow_duration_is_the_exceedance_quantile():
    q = np.arange(1.0, 101.0)
    curve = science.flow_duration(q, [1.0, 50.0, 99.0])
    np.testing.assert_allclose(curve, np.percentile(q, [99.0, 50.0, 1.0]))
    assert science.FLOW_DURATION_PROBABILITIES.size == 20
    full = science.flow_duration(np.r_[q, np.nan])
    assert (np.diff(full) <= 0).all()
    assert np.isnan(science.flow_duration([np.nan], [50.0])).all()


def test_annual_maxima_skip_poorly_covered_years():
    days = np.arange(3 * 365)
    q = 10.0 + days % 365
    q[365 + 10] = 1000.0
    q[2 * 365 : 2 * 365 + 200] = np.nan  # third year only 45 % covered
    maxima = science.annual_maxima(q, days * 86400.0)
    np.testing.assert_array_equal(maxima, [374.0, 1000.0])
    assert science.annual_maxima([np.nan], [0.0]).size == 0


def test_two_year_return_is_the_gumbel_median():
    rng = np.random.default_rng(1)
    location, scale = 500.0, 120.0
    maxima = location - scale * np.log(-np.log(rng.uniform(size=4000)))
    median = location - scale * np.log(np.log(2.0))
    assert science.two_year_return(maxima) == pytest.approx(median, rel=0.02)
    assert science.two_year_return([42.0]) == 42.0
    assert np.isnan(science.two_year_return([]))


def test_discharge_statistics_and_replacement_keep_model_values_for_missing_statistics():
    time = np.arange(400) * 86400.0
    q = np.linspace(10.0, 50.0, 400)
    stats = science.discharge_statistics(q, time)
    assert stats["mean_q"] == pytest.approx(30.0) and stats["min_q"] == 10.0
    assert stats["two_year_return_q"] == pytest.approx(q[:365].max())
    assert science.usable_for_priors(q) and not science.usable_for_priors(q[:100])
    empty = science.discharge_statistics([np.nan, np.nan], time[:2])
    assert np.isnan(empty["mean_q"]) and np.isnan(empty["flow_duration_q"]).all()

    model = {
        "mean_q": np.array([1.0, 2.0]),
        "min_q": np.array([0.5, 1.0]),
        "max_q": np.array([3.0, 4.0]),
        "two_year_return_q": np.array([2.5, 3.5]),
        "flow_duration_q": np.array([[3.0, 1.0], [4.0, 2.0]]),
    }
    partial = {**stats, "two_year_return_q": float("nan"), "flow_duration_q": np.array([9, 8])}
    updated = science.replace_model_priors(model, [1], [partial])
    assert updated["mean_q"].tolist() == [1.0, stats["mean_q"]]
    assert updated["two_year_return_q"].tolist() == [2.5, 3.5]
    assert updated["flow_duration_q"].tolist() == [[3.0, 1.0], [9.0, 8.0]]
    assert model["mean_q"].tolist() == [1.0, 2.0], "the input must not be modified"
