"""The NetCDF I/O of the contract layouts: round trips, fill values, names, broken files."""

from __future__ import annotations

import time

import netCDF4
import numpy as np
import pytest

from confluence import contract, ncio
from confluence.contract import FLOAT_FILL, INT_FILL, ItemError, UpstreamMissing
from confluence.science.types import FlpeResult

RID = 74100200011
NODE_IDS = np.array([74100200001011, 74100200001021, 74100200001031])


def make_swot(nt: int = 6, nx: int = 3, reach_id: int = RID) -> ncio.SwotReach:
    rng = np.random.default_rng(3)
    time_ = 7.4e8 + 86400.0 * np.arange(nt) * 3
    floats = {name: rng.uniform(1, 100, nt) for name in ncio.SWOT_REACH_FLOATS}
    flags = {name: rng.integers(0, 3, nt).astype(float) for name in ncio.SWOT_REACH_FLAGS}
    floats["width"][2] = np.nan
    flags["reach_q"][4] = np.nan
    node = {name: rng.uniform(1, 100, (nx, nt)) for name in ncio.SWOT_NODE_VARS}
    node["wse"][1, 3] = np.nan
    node["node_q"] = rng.integers(0, 4, (nx, nt)).astype(float)
    node["node_q"][0, 0] = np.nan
    return ncio.SwotReach(
        reach_id=reach_id,
        time=time_,
        time_str=ncio.time_to_str(time_),
        node_id=NODE_IDS[:nx],
        node=node,
        **floats,
        **flags,
    )


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- SWOT ----------------------------------------------------------------------------------


def test_swot_round_trip_keeps_values_and_nan(tmp_path):
    swot = make_swot()
    path = tmp_path / contract.swot_name(RID)
    ncio.write_swot(path, swot)
    back = ncio.read_swot(path)
    assert back.reach_id == RID and back.nt == 6
    for name in ("time", *ncio.SWOT_REACH_VARS):
        assert_same(getattr(back, name), getattr(swot, name))
    assert np.isnan(back.width[2]) and np.isnan(back.reach_q[4])
    assert back.time_str == swot.time_str and back.time_str[0].endswith("Z")
    assert_same(back.node_id, NODE_IDS)
    assert set(back.node) == set(swot.node)
    for name, values in swot.node.items():
        assert_same(back.node[name], values)


def test_swot_file_has_the_contract_names_and_fill_values(tmp_path):
    path = tmp_path / "x_SWOT.nc"
    ncio.write_swot(path, make_swot())
    with netCDF4.Dataset(path) as ds:
        assert set(ds.dimensions) == {"nt", "nx"}
        assert set(ds.groups) == {"reach", "node"}
        reach, node = ds["reach"], ds["node"]
        expected = {"reach_id", "time", "time_str", *ncio.SWOT_REACH_VARS}
        assert expected <= set(reach.variables)
        assert {"node_id", *ncio.SWOT_NODE_VARS} <= set(node.variables)
        assert reach["width"].dimensions == ("nt",)
        assert node["wse"].dimensions == ("nx", "nt")
        ds.set_auto_mask(False)
        assert reach["width"][2] == FLOAT_FILL
        assert reach["reach_q"][4] == INT_FILL
        assert int(reach["reach_id"][...]) == RID


def test_fill_values_written_by_others_read_as_nan(tmp_path):
    path = tmp_path / "other_SWOT.nc"
    swot = make_swot()
    swot.time = swot.time[:3]
    swot.time_str = swot.time_str[:3]
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("nt", 3)
        ds.createDimension("nx", 1)
        reach = ds.createGroup("reach")
        reach.createVariable("reach_id", "i8", ())[...] = RID
        reach.createVariable("time", "f8", ("nt",))[:] = swot.time
        reach.createVariable("time_str", str, ("nt",))[:] = np.array(swot.time_str, object)
        for name in ncio.SWOT_REACH_FLOATS:
            var = reach.createVariable(name, "f8", ("nt",), fill_value=FLOAT_FILL)
            var.set_auto_mask(False)
            var[:] = [1.0, FLOAT_FILL, 3.0]
        for name in ncio.SWOT_REACH_FLAGS:
            var = reach.createVariable(name, "i4", ("nt",), fill_value=INT_FILL)
            var.set_auto_mask(False)
            var[:] = [0, 1, INT_FILL]
        node = ds.createGroup("node")
        node.createVariable("node_id", "i8", ("nx",))[:] = NODE_IDS[:1]
        var = node.createVariable("wse", "f8", ("nx", "nt"), fill_value=FLOAT_FILL)
        var.set_auto_mask(False)
        var[:] = [[FLOAT_FILL, 2.0, 3.0]]
    back = ncio.read_swot(path)
    assert_same(back.wse, [1.0, np.nan, 3.0])
    assert_same(back.reach_q, [0.0, 1.0, np.nan])
    assert_same(back.node["wse"], [[np.nan, 2.0, 3.0]])


def test_observations_map_swot_names_and_mask(tmp_path):
    swot = make_swot()
    valid = np.ones(6, bool)
    valid[0] = False
    obs = swot.observations(valid)
    assert obs.reach_id == RID
    assert_same(obs.slope, swot.slope2)
    assert_same(obs.dA, swot.d_x_area)
    assert_same(obs.dA_u, swot.d_x_area_u)
    # Observation 0 rejected by the mask, 2 by its missing width.
    assert_same(obs.valid, [False, True, False, True, True, True])
    assert swot.observations().n_valid == 5
    with pytest.raises(ItemError, match=f"reach {RID}: validity mask"):
        swot.observations(np.ones(4, bool))


def test_swot_read_is_fast(tmp_path):
    path = tmp_path / "fast_SWOT.nc"
    ncio.write_swot(path, make_swot(nt=40, nx=3))
    ncio.read_swot(path)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        ncio.read_swot(path)
        timings.append(time.perf_counter() - start)
    # Measured ~5 ms; the bound only catches a regression such as masked-array reads.
    assert np.median(timings) < 0.03


def test_a_failed_write_leaves_no_file(tmp_path):
    swot = make_swot()
    swot.width = swot.width[:3]
    path = tmp_path / "bad_SWOT.nc"
    with pytest.raises(ValueError, match="width has shape"):
        ncio.write_swot(path, swot)
    assert list(tmp_path.iterdir()) == []


# --- broken and missing files, for every reader ----------------------------------------------

READERS = {
    "swot": ncio.read_swot,
    "sword": ncio.read_sword,
    "sos": ncio.read_sos,
    "flpe": ncio.read_flpe,
    "gauges": ncio.read_gauges,
    "granule": ncio.read_granule,
}


def write_valid(kind: str, path):
    if kind == "swot":
        ncio.write_swot(path, make_swot())
    elif kind == "sword":
        ncio.write_sword(path, make_sword())
    elif kind == "sos":
        ncio.write_sos(path, make_sos())
    elif kind == "flpe":
        ncio.write_flpe(path, [make_flpe(RID, 5)])
    elif kind == "gauges":
        ncio.write_gauges(path, make_gauge_records())
    else:
        ncio.write_granule(path, make_granule())


@pytest.mark.parametrize("kind", READERS)
def test_missing_file_raises_upstream_missing(tmp_path, kind):
    path = tmp_path / "absent.nc"
    with pytest.raises(UpstreamMissing, match=str(path)):
        READERS[kind](path)


@pytest.mark.parametrize("kind", READERS)
def test_truncated_file_raises_item_error_naming_it(tmp_path, kind):
    path = tmp_path / f"truncated_{kind}.nc"
    write_valid(kind, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ItemError, match=str(path)) as err:
        READERS[kind](path)
    assert not isinstance(err.value, UpstreamMissing)


@pytest.mark.parametrize("kind", READERS)
def test_garbage_file_raises_item_error_naming_it(tmp_path, kind):
    path = tmp_path / f"garbage_{kind}.nc"
    path.write_bytes(b"this is not a NetCDF file\n" * 40)
    with pytest.raises(ItemError, match=f"{path}: unreadable"):
        READERS[kind](path)


@pytest.mark.parametrize("kind", READERS)
def test_wrong_layout_raises_item_error_naming_it(tmp_path, kind):
    path = tmp_path / f"empty_{kind}.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("nt", 2)
        ds.createVariable("something", "f8", ("nt",))[:] = [1, 2]
    with pytest.raises(ItemError, match=f"{path}: unreadable or not in the"):
        READERS[kind](path)


# --- SWORD ---------------------------------------------------------------------------------


def make_sword() -> ncio.Sword:
    ids = np.array([74100200011, 74100200021, 74100200031])
    up = np.zeros((4, 3), np.int64)
    up[:2, 0] = [74100200021, 74100200031]
    dn = np.zeros((4, 3), np.int64)
    dn[0, 1:] = 74100200011
    return ncio.Sword(
        reach_id=ids,
        reach_length=np.array([10e3, 12e3, 8e3]),
        dist_out=np.array([10e3, 22e3, 18e3]),
        wse=np.array([10.0, 12.0, 11.0]),
        width=np.array([200.0, 120.0, 90.0]),
        slope=np.array([0.1, 0.2, np.nan]),
        facc=np.array([5e4, 3e4, 1e4]),
        rch_id_up=up,
        rch_id_dn=dn,
        n_rch_up=np.array([2, 0, 0]),
        n_rch_down=np.array([0, 1, 1]),
        node_id=np.array([7410020000101, 7410020000111, 7410020000201]) * 10 + 1,
        node_reach_id=np.array([74100200011, 74100200011, 74100200021]),
        node_dist_out=np.array([100.0, 300.0, 10100.0]),
        x=np.array([-100.0, -100.1, -99.9]),
        y=np.array([40.0, 40.1, 40.1]),
    )


def test_sword_round_trip_and_topology_helpers(tmp_path):
    path = tmp_path / contract.sword_name("na")
    sword = make_sword()
    ncio.write_sword(path, sword)
    back = ncio.read_sword(path)
    for name in ("reach_id", "reach_length", "slope", "rch_id_up", "rch_id_dn", "node_id", "x"):
        assert_same(getattr(back, name), getattr(sword, name))
    assert back.node_x is None
    assert back.upstream(74100200011) == [74100200021, 74100200031]
    assert back.downstream(74100200021) == [74100200011]
    assert back.downstream(74100200011) == []
    assert_same(back.nodes_of(74100200011), sword.node_id[:2])
    with pytest.raises(ItemError, match="reach 123 is not in SWORD"):
        back.row(123)
    with netCDF4.Dataset(path) as ds:
        assert set(ncio.SWORD_REACH_VARS) <= set(ds["reaches"].variables)
        assert {"node_id", "reach_id", "dist_out"} <= set(ds["nodes"].variables)
        assert ds["reaches/rch_id_up"].shape == (4, 3)


# --- SoS -----------------------------------------------------------------------------------


def make_sos(gauges: bool = True) -> ncio.Sos:
    sword = make_sword()
    nr = 3
    probability = np.array([1.0, 50.0, 99.0])
    model = {
        "mean_q": np.array([300.0, 150.0, np.nan]),
        "min_q": np.array([30.0, 15.0, 5.0]),
        "max_q": np.array([3000.0, 1500.0, 500.0]),
        "two_year_return_q": np.array([1500.0, 800.0, 300.0]),
        "flow_duration_q": np.array([[2000.0, 250.0, 40.0]] * nr),
        "probability": probability,
    }
    gb_reach = {
        "logn_hat": np.log([0.03, 0.04, np.nan]),
        "logn_sd": np.full(nr, 0.25),
        "logWb_hat": np.log([250.0, 150.0, 100.0]),
        "lowerbound_logn": np.full(nr, np.log(0.01)),
    }
    gb_node = {"logn_hat": np.log([0.03, 0.03, 0.04])}
    groups = {}
    if gauges:
        day0 = ncio.EPOCH_ORDINAL + 8600
        qt = np.tile(day0 + np.arange(4.0), (1, 1))
        groups["USGS"] = ncio.GaugeGroup(
            agency="USGS",
            reach_id=np.array([74100200021]),
            q=np.array([[100.0, np.nan, 120.0, 130.0]]),
            qt=qt,
            cal=np.array([True]),
            station_id=["01234567"],
            stats={"mean_q": np.array([116.7]), "flow_duration_q": np.array([[130.0, 120, 100]])},
        )
    return ncio.Sos(
        reach_id=sword.reach_id,
        x=sword.x,
        y=sword.y,
        node_id=sword.node_id,
        node_reach_id=sword.node_reach_id,
        model=model,
        gbpriors_reach=gb_reach,
        gbpriors_node=gb_node,
        gauges=groups,
        attrs={"run_type": "constrained"},
    )


def test_sos_round_trip_prior_and_gauge(tmp_path):
    path = tmp_path / contract.sos_priors_name("na")
    sos = make_sos()
    ncio.write_sos(path, sos)
    back = ncio.read_sos(path)
    assert back.path == str(path) and back.attrs["run_type"] == "constrained"
    for name, values in sos.model.items():
        assert_same(back.model[name], values)
    prior = back.prior(74100200011)
    assert (prior.mean_q, prior.min_q, prior.max_q) == (300.0, 30.0, 3000.0)
    assert prior.logn_hat == pytest.approx(np.log(0.03))
    assert prior.logWb_hat == pytest.approx(np.log(250.0))
    # NaN gbpriors fall back to ReachPrior's defaults; NaN model values stay NaN.
    third = back.prior(74100200031)
    assert third.logn_hat == pytest.approx(np.log(0.03)) and np.isnan(third.mean_q)
    with pytest.raises(ItemError, match=f"{path}: reach 999 is not in the SoS"):
        back.prior(999)
    gauge = back.gauge(74100200021)
    assert gauge.agency == "USGS" and gauge.cal and gauge.station_id == "01234567"
    assert_same(gauge.q, [100.0, 120.0, 130.0])  # the missing day is dropped
    assert_same(gauge.time, (8600 + np.array([0.0, 2.0, 3.0])) * 86400.0)
    assert back.gauge(74100200011) is None
    group = back.gauges["USGS"]
    assert_same(group.stats["flow_duration_q"], [[130.0, 120.0, 100.0]])
    assert_same(group.stats["mean_q"], [116.7])


def test_sos_file_has_the_contract_groups(tmp_path):
    path = tmp_path / "sos.nc"
    ncio.write_sos(path, make_sos())
    with netCDF4.Dataset(path) as ds:
        assert {"reaches", "nodes", "model", "gbpriors", "USGS"} <= set(ds.groups)
        assert set(ds["gbpriors"].groups) == {"reach", "node"}
        assert {"reach_id", "x", "y"} <= set(ds["reaches"].variables)
        assert set(ncio.SOS_MODEL_VARS) <= set(ds["model"].variables)
        assert ds["model/flow_duration_q"].dimensions == ("num_reaches", "num_probability")
        assert {"USGS_reach_id", "USGS_q", "USGS_qt", "CAL"} <= set(ds["USGS"].variables)
    no_gauges = tmp_path / "plain.nc"
    ncio.write_sos(no_gauges, make_sos(gauges=False))
    assert ncio.read_sos(no_gauges).gauges == {}


# --- gauges and granules -------------------------------------------------------------------


def make_gauge_records() -> ncio.GaugeRecords:
    return ncio.GaugeRecords(
        reach_id=np.array([74100200011, 74100200021]),
        station_id=["01234567", "07654321"],
        agency=["USGS", "USGS"],
        cal=np.array([True, False]),
        time=8600 * 86400.0 + 86400.0 * np.arange(3),
        q=np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]]),
    )


def test_gauge_records_round_trip(tmp_path):
    path = tmp_path / "na_gauges.nc"
    records = make_gauge_records()
    ncio.write_gauges(path, records)
    back = ncio.read_gauges(path)
    assert back.station_id == records.station_id and back.agency == records.agency
    for name in ("reach_id", "cal", "time", "q"):
        assert_same(getattr(back, name), getattr(records, name))


def make_granule() -> ncio.Granule:
    # Records deliberately unsorted: the writer sorts them by reach (and node) ID.
    reach_ids = np.array([74100200031, 74100200011])
    node_reach = np.array([74100200011, 74100200031, 74100200011])
    node_ids = np.array([74100200001021, 74100200003011, 74100200001011])
    reach = {f: np.array([2.0, 1.0]) for f in ncio.GRANULE_REACH_FIELDS}
    node = {f: np.array([1.2, 3.1, 1.1]) for f in ncio.GRANULE_NODE_FIELDS}
    reach["wse"] = np.array([np.nan, 1.0])
    return ncio.Granule(7, 101, reach_ids, reach, node_ids, node_reach, node)


def test_granule_round_trip_and_one_reach_rows(tmp_path):
    path = tmp_path / ncio.granule_name(7, 101)
    assert path.name == "SWOT_L2_HR_RiverSP_007_101.nc"
    ncio.write_granule(path, make_granule())
    whole = ncio.read_granule(path)
    assert (whole.cycle, whole.pass_number) == (7, 101)
    assert_same(whole.reach_id, [74100200011, 74100200031])
    assert_same(whole.reach["wse"], [1.0, np.nan])
    one = ncio.read_granule(path, 74100200011)
    assert_same(one.reach_id, [74100200011])
    assert_same(one.node_id, [74100200001011, 74100200001021])
    assert_same(one.node["width"], [1.1, 1.2])
    none = ncio.read_granule(path, 74100200021)
    assert none.reach_id.size == 0 and none.node_id.size == 0
    assert none.node["wse"].shape == (0,)


# --- FLPE results --------------------------------------------------------------------------


def make_flpe(reach_id: int, nt: int, algorithm: str = "momma") -> FlpeResult:
    t = 7.4e8 + 86400.0 * np.arange(nt)
    q = 100.0 + np.arange(nt, dtype=float)
    q[0] = np.nan
    return FlpeResult(algorithm, "momma", reach_id, t, q, 0.3 * q, {"B": 1.5, "Hb": 4.0})


def test_flpe_round_trip_with_ragged_lengths(tmp_path):
    path = tmp_path / "set_metroman.nc"
    results = [make_flpe(74100200011, 5), make_flpe(74100200021, 3)]
    results[1].params = {"B": 2.0}
    ncio.write_flpe(path, results)
    back = ncio.read_flpe(path)
    assert [r.reach_id for r in back] == [74100200011, 74100200021]
    for a, b in zip(back, results, strict=True):
        assert (a.algorithm, a.flow_law) == (b.algorithm, b.flow_law)
        assert_same(a.time, b.time)
        assert_same(a.q, b.q)
        assert_same(a.q_u, b.q_u)
    assert back[0].params == {"B": 1.5, "Hb": 4.0}
    assert back[1].params["B"] == 2.0 and np.isnan(back[1].params["Hb"])
    with netCDF4.Dataset(path) as ds:
        assert set(ds.dimensions) == {"nr", "nt"}
        assert {"reach_id", "time", "q", "q_u", "B", "Hb"} <= set(ds.variables)
        assert ds.algorithm == "momma" and ds.flow_law == "momma"
    with pytest.raises(ValueError, match="no FLPE results"):
        ncio.write_flpe(tmp_path / "none.nc", [])


def test_find_flpe_result_per_reach_and_per_set(tmp_path):
    a, b, c = 74100200011, 74100200021, 74100200031
    ncio.write_flpe(tmp_path / "momma" / f"{a}_momma.nc", [make_flpe(a, 4)])
    assert ncio.find_flpe_result(tmp_path, "momma", a).reach_id == a
    with pytest.raises(UpstreamMissing, match=f"reach {b}: no momma result"):
        ncio.find_flpe_result(tmp_path, "momma", b)

    set_file = tmp_path / "metroman" / f"{a}-{b}_metroman.nc"
    ncio.write_flpe(set_file, [make_flpe(a, 4, "metroman"), make_flpe(b, 4, "metroman")])
    sets = [[{"reach_id": a}, {"reach_id": b}], [{"reach_id": c}]]
    assert ncio.find_flpe_result(tmp_path, "metroman", b, sets).reach_id == b
    assert ncio.find_flpe_result(tmp_path, "metroman", b).reach_id == b  # by file name
    with pytest.raises(UpstreamMissing, match=f"reach {c}: no metroman result"):
        ncio.find_flpe_result(tmp_path, "metroman", c, sets)
    with pytest.raises(UpstreamMissing, match=f"reach {c}: no metroman result"):
        ncio.find_flpe_result(tmp_path, "metroman", c)
    # MetroMan may leave a reach out of its set's file: no result, like a failed item.
    ncio.write_flpe(tmp_path / "metroman" / f"{c}_metroman.nc", [make_flpe(a, 4, "metroman")])
    with pytest.raises(UpstreamMissing, match=f"reach {c}: left out of its metroman set"):
        ncio.find_flpe_result(tmp_path, "metroman", c, sets)
    # A reach's own file that lacks the reach is a broken output, not a missing one.
    ncio.write_flpe(tmp_path / "momma" / f"{c}_momma.nc", [make_flpe(a, 4)])
    with pytest.raises(ItemError, match=f"has no result for reach {c}") as err:
        ncio.find_flpe_result(tmp_path, "momma", c)
    assert not isinstance(err.value, UpstreamMissing)


def test_time_conversions():
    assert ncio.time_to_str([0.0, 86400.0 * 366 + 3661, np.nan]) == [
        "2000-01-01T00:00:00Z",
        "2001-01-01T01:01:01Z",
        "no_data",
    ]
    days = np.array([ncio.EPOCH_ORDINAL, ncio.EPOCH_ORDINAL + 10])
    assert_same(ncio.seconds_from_ordinal(days), [0.0, 864000.0])
    assert_same(ncio.ordinal_from_seconds([0.0, 864000.0 + 5]), days)
