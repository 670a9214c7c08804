"""The synthetic domain: files in the contract layouts, known hydrology, realistic sampling."""

from __future__ import annotations

import copy
import json
import time

import netCDF4
import numpy as np
import pytest
import yaml

from confluence import cli, contract, ncio, synthetic
from confluence.science import flowlaws

ONE_CONTINENT = {
    "kind": "synthetic",
    "seed": 5,
    "continents": {"sa": {"basins": 2, "reaches_per_basin": [3, 6]}},
    "observations": True,
    "start": "2023-01-01",
    "days": 60,
    "gauge_fraction": 0.5,
    "noise": True,
    "faulty_reaches": 1,
}


def granule_records(root, continent):
    """All reach records of a continent's granules, concatenated."""
    records: dict[str, list] = {"reach_id": [], "pass": [], "cycle": []}
    for path in sorted((root / "swot_raw" / continent).glob("*.nc")):
        g = ncio.read_granule(path)
        records["reach_id"].append(g.reach_id)
        records["pass"].append(np.full(g.reach_id.size, g.pass_number))
        records["cycle"].append(np.full(g.reach_id.size, g.cycle))
        for name, values in g.reach.items():
            records.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in records.items()}


def all_variables(path) -> dict[str, np.ndarray]:
    """Every variable of a NetCDF file by its full path, raw values."""
    out = {}

    def walk(group, prefix):
        group.set_auto_mask(False)
        for name, var in group.variables.items():
            out[prefix + name] = np.asarray(var[...])
        for name, sub in group.groups.items():
            walk(sub, f"{prefix}{name}/")

    with netCDF4.Dataset(path) as ds:
        walk(ds, "")
    return out


def generated_files(base):
    return sorted(p for p in base.rglob("*.nc"))


# --- files ---------------------------------------------------------------------------------


def test_every_file_is_where_the_contract_says_and_readable(synthetic_inputs):
    root = synthetic_inputs.root
    for continent in synthetic_inputs.continents:
        truth = synthetic_inputs.truth(continent)
        sword = ncio.read_sword(root / "sword" / contract.sword_name(continent))
        assert np.array_equal(sword.reach_id, truth.reach_id)
        assert all(contract.continent_of(r) == continent for r in sword.reach_id)
        # Topology: SWORD's first downstream neighbour is the truth's.
        assert np.array_equal(sword.rch_id_dn[0], truth.reach_dn)
        for i, rid in enumerate(sword.reach_id):
            for up in sword.upstream(rid):
                assert sword.downstream(up) == [rid]
            nodes = sword.nodes_of(rid)
            assert 10 <= nodes.size <= 40
            assert np.all(nodes // 10**4 == rid // 10)  # CBBBBBRRRR of the reach
            spacing = sword.reach_length[i] / nodes.size
            assert 150 <= spacing <= 1000
        sos = ncio.read_sos(root / "sos" / "previous" / contract.sos_priors_name(continent))
        assert sos.gauges == {}, "the previous SoS version has no gauge groups"
        assert np.array_equal(sos.reach_id, truth.reach_id)
        assert set(ncio.SOS_MODEL_VARS) <= set(sos.model)
        assert sos.model["flow_duration_q"].shape == (truth.reach_id.size, 20)
        assert {"logn_hat", "logA0_hat", "logWb_hat", "logDb_hat", "logr_hat", "logQ_sd"} <= set(
            sos.gbpriors_reach
        )
        assert sos.gbpriors_node["logWb_hat"].shape == sos.node_id.shape
        records = ncio.read_gauges(root / "gage" / ncio.gauge_file_name(continent))
        assert set(records.agency) == {"USGS" if continent == "na" else "GRDC"}
        names = [p.name for p in (root / "swot_raw" / continent).iterdir()]
        assert names and all(
            n.startswith("SWOT_L2_HR_RiverSP_") and n.endswith(".nc") for n in names
        )


def test_truth_conserves_mass_along_the_topology(synthetic_inputs):
    for continent in synthetic_inputs.continents:
        truth = synthetic_inputs.truth(continent)
        row = {int(r): i for i, r in enumerate(truth.reach_id)}
        inflow = truth.q_lateral.copy()
        for i, dn in enumerate(truth.reach_dn):
            if dn:
                inflow[row[int(dn)]] += truth.q[i]
        np.testing.assert_allclose(truth.q, inflow, rtol=1e-12)
        assert (truth.q_lateral > 0).all()
        outlets = truth.reach_dn == 0
        assert outlets.any()
        # An outlet carries more than any reach upstream of it.
        for i in np.flatnonzero(~outlets):
            assert (truth.q[row[int(truth.reach_dn[i])]] > truth.q[i]).all()


def test_truth_observables_follow_manning_and_hydraulic_geometry(synthetic_inputs):
    truth = synthetic_inputs.truth("na")
    q = flowlaws.manning(
        truth.n[:, None], truth.A0[:, None], truth.width, truth.slope, truth.d_x_area
    )
    np.testing.assert_allclose(q, truth.q, rtol=1e-10)
    ratio = truth.q / truth.qc[:, None]
    np.testing.assert_allclose(truth.width, truth.wc[:, None] * ratio ** truth.b[:, None])
    area = truth.A0[:, None] + truth.d_x_area
    np.testing.assert_allclose(truth.wse, truth.bed_elevation[:, None] + area / truth.width)
    assert (area > 0).all() and ((0.02 < truth.n) & (truth.n < 0.05)).all()
    # Rivers SWOT can see: tens to hundreds of metres wide, a seasonal and event signal.
    assert 30 < np.median(truth.width) < 600
    assert np.median(truth.q.max(axis=1) / truth.q.min(axis=1)) > 1.5


def test_same_spec_gives_identical_values_and_another_seed_does_not(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthetic.generate(ONE_CONTINENT, "sa", first / "input", first / "truth")
    synthetic.generate(ONE_CONTINENT, "sa", second / "input", second / "truth")
    files = generated_files(first)
    assert len(files) > 5
    assert [p.relative_to(first) for p in files] == [
        p.relative_to(second) for p in generated_files(second)
    ]
    for path in files:
        a, b = all_variables(path), all_variables(second / path.relative_to(first))
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), f"{path.name}:{name} differs"
    reseeded = {**ONE_CONTINENT, "seed": 6}
    synthetic.generate(reseeded, "sa", other / "input", other / "truth")
    q_first = synthetic.read_truth(first / "truth" / "sa_truth.nc").q
    q_other = synthetic.read_truth(other / "truth" / "sa_truth.nc").q
    assert q_first.shape != q_other.shape or not np.allclose(q_first, q_other)


def test_faulty_reaches_get_fewer_than_four_observations(synthetic_inputs):
    for continent in synthetic_inputs.continents:
        truth = synthetic_inputs.truth(continent)
        records = granule_records(synthetic_inputs.root, continent)
        counts = np.array([(records["reach_id"] == r).sum() for r in truth.reach_id])
        assert truth.faulty.sum() == synthetic_inputs.spec["faulty_reaches"]
        assert (counts[truth.faulty] >= 1).all() and (counts[truth.faulty] < 4).all()
        assert (counts[~truth.faulty] >= 4).all()
        summary = synthetic_inputs.summaries[continent]
        assert summary["faulty_reaches"] == [int(r) for r in truth.reach_id[truth.faulty]]
        assert not (truth.gauged & truth.faulty).any(), "faulty reaches carry no gauge"


def test_a_year_gives_20_to_50_observations_per_reach_from_1_to_3_passes(tmp_path):
    spec = {**ONE_CONTINENT, "days": 365, "faulty_reaches": 0}
    summary = synthetic.generate(spec, "sa", tmp_path / "input", tmp_path / "truth")
    records = granule_records(tmp_path / "input", "sa")
    ids = np.unique(records["reach_id"])
    counts = np.array([(records["reach_id"] == r).sum() for r in ids])
    assert ids.size == summary["reaches"]
    assert 15 <= counts.min() and counts.max() <= 60 and 20 <= np.median(counts) <= 50
    for rid in ids:
        mine = records["reach_id"] == rid
        passes = np.unique(records["pass"][mine])
        assert 1 <= passes.size <= 3
        # One record per pass and cycle.
        pairs = records["cycle"][mine] * 1000 + records["pass"][mine]
        assert np.unique(pairs).size == pairs.size
    # Quality flags: mostly good, with work for prediagnostics.
    assert (records["reach_q"] == 0).mean() > 0.6
    assert (records["dark_frac"] > 0.6).any() and (records["obs_frac_n"] < 0.4).any()
    assert ((records["xtrk_dist"] != 0) & (np.abs(records["xtrk_dist"]) < 62_000)).all()


def test_without_noise_the_observations_are_the_truth(tmp_path):
    spec = {**ONE_CONTINENT, "noise": False}
    synthetic.generate(spec, "sa", tmp_path / "input", tmp_path / "truth")
    truth = synthetic.read_truth(tmp_path / "truth" / "sa_truth.nc")
    records = granule_records(tmp_path / "input", "sa")
    row = np.searchsorted(truth.reach_id, records["reach_id"])
    day = np.floor((records["time"] - truth.time[0]) / 86400.0).astype(int)
    for name, true in (
        ("width", truth.width),
        ("wse", truth.wse),
        ("slope2", truth.slope),
        ("d_x_area", truth.d_x_area),
    ):
        np.testing.assert_allclose(records[name], true[row, day], rtol=1e-12, err_msg=name)
    # Uncertainties still carry the SWOT error levels.
    assert (records["wse_u"] > 0).all() and (records["width_u"] > 0).all()


def test_noise_matches_the_stated_uncertainties(synthetic_inputs):
    residual = {"wse": [], "width": [], "slope2": []}
    sigma = {"wse": [], "width": [], "slope2": []}
    for continent in synthetic_inputs.continents:
        truth = synthetic_inputs.truth(continent)
        records = granule_records(synthetic_inputs.root, continent)
        good = records["reach_q"] == 0
        row = np.searchsorted(truth.reach_id, records["reach_id"][good])
        day = np.floor((records["time"][good] - truth.time[0]) / 86400.0).astype(int)
        for name, true in (("wse", truth.wse), ("width", truth.width), ("slope2", truth.slope)):
            residual[name].append(records[name][good] - true[row, day])
            sigma[name].append(records[f"{name}_u"][good])
    for name in residual:
        z = np.concatenate(residual[name]) / np.concatenate(sigma[name])
        assert z.size > 100
        assert 0.75 < z.std() < 1.3, f"{name}: normalised residual sd {z.std():.2f}"
        assert abs(z.mean()) < 0.25
    # Width: 15 % relative error at reach scale.
    assert np.median(np.concatenate(sigma["width"]) / 0.15) > 30


def test_gauges_follow_the_truth_and_include_calibration_gauges(synthetic_inputs):
    for continent in synthetic_inputs.continents:
        truth = synthetic_inputs.truth(continent)
        records = ncio.read_gauges(synthetic_inputs.root / "gage" / ncio.gauge_file_name(continent))
        fraction = synthetic_inputs.spec["gauge_fraction"]
        assert records.reach_id.size == max(1, round(fraction * truth.reach_id.size))
        assert np.array_equal(np.sort(records.reach_id), truth.reach_id[truth.gauged])
        assert records.cal.any() and (records.cal.sum() < records.cal.size or records.cal.size == 1)
        # A gauge history of years before the observation period (for 2-year returns).
        assert records.time[0] <= truth.time[0] - 5 * 365 * 86400
        overlap = np.searchsorted(records.time, truth.time)
        assert np.array_equal(records.time[overlap], truth.time)
        for g, rid in enumerate(records.reach_id):
            gauge = records.q[g, overlap]
            true = truth.q[np.searchsorted(truth.reach_id, rid)]
            ok = np.isfinite(gauge)
            ratio = gauge[ok] / true[ok]
            assert ok.mean() > 0.5 and 0.8 < np.median(ratio) < 1.2


def test_model_priors_carry_realistic_error(synthetic_inputs):
    ratios = []
    for continent in synthetic_inputs.continents:
        truth = synthetic_inputs.truth(continent)
        sos = ncio.read_sos(
            synthetic_inputs.root / "sos" / "previous" / contract.sos_priors_name(continent)
        )
        model = sos.model
        assert (model["min_q"] < model["mean_q"]).all() and (model["mean_q"] < model["max_q"]).all()
        assert (np.diff(model["flow_duration_q"], axis=1) <= 0).all()
        assert (model["min_q"] <= model["two_year_return_q"]).all()
        ratios.append(model["mean_q"] / truth.q.mean(axis=1))
    log_ratio = np.log(np.concatenate(ratios))
    # Wrong, as a model is: neither exact nor wildly off.
    assert 0.15 < log_ratio.std() < 1.0 and np.abs(log_ratio).max() < np.log(10)


def test_without_observations_no_granules_are_written(tmp_path):
    spec = {**ONE_CONTINENT, "observations": False}
    summary = synthetic.generate(spec, "sa", tmp_path / "input", tmp_path / "truth")
    assert summary["granules"] == 0
    assert not (tmp_path / "input" / "swot_raw").exists()
    assert (tmp_path / "input" / "sword" / "sa_sword_v16.nc").exists()


def test_demo_sized_continent_is_generated_fast(tmp_path):
    spec = {**ONE_CONTINENT, "continents": {"na": {"basins": 3, "reaches_per_basin": [20, 40]}}}
    spec["days"] = 150
    start = time.perf_counter()
    summary = synthetic.generate(spec, "na", tmp_path / "input", tmp_path / "truth")
    elapsed = time.perf_counter() - start
    assert summary["reaches"] >= 60
    assert elapsed < 3.0, f"{summary['reaches']} reaches took {elapsed:.2f} s"


def test_unknown_or_absent_continent_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="continent 'xx' is unknown"):
        synthetic.generate(ONE_CONTINENT, "xx", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="continent 'na' has no reaches"):
        synthetic.generate(ONE_CONTINENT, "na", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="domain.start"):
        synthetic.generate({**ONE_CONTINENT, "start": "July"}, "sa", tmp_path, tmp_path)


def test_synthesize_command(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    domain = copy.deepcopy(ONE_CONTINENT)
    config.write_text(yaml.safe_dump({"domain": domain}))
    args = ["synthesize", "--configfile", str(config), "--continent", "sa"]
    paths = ["--input-dir", str(tmp_path / "in"), "--truth-dir", str(tmp_path / "truth")]
    assert cli.main(args + paths) == 0
    assert "sa: " in capsys.readouterr().out
    assert (tmp_path / "in" / "sos" / "previous" / "sa_sword_v16_SOS_priors.nc").exists()
    assert (tmp_path / "truth" / "sa_truth.nc").exists()
    # The default config's continents (eu, na) merge with this file's; oc is in neither.
    bad = ["synthesize", "--configfile", str(config), "--continent", "oc"]
    assert cli.main(bad + paths) == 2
    assert "continent 'oc' has no reaches" in capsys.readouterr().err


def test_synthesize_command_with_the_domain_as_json(tmp_path, capsys):
    paths = ["--input-dir", str(tmp_path / "in"), "--truth-dir", str(tmp_path / "truth")]
    domain = json.dumps({**ONE_CONTINENT, "observations": False})
    assert cli.main(["synthesize", "--domain", domain, "--continent", "sa", *paths]) == 0
    assert (tmp_path / "truth" / "sa_truth.nc").exists()
    assert not (tmp_path / "in" / "swot_raw").exists()
    assert cli.main(["synthesize", "--domain", "[1]", "--continent", "sa", *paths]) == 2
    assert "--domain must be a JSON object" in capsys.readouterr().err
