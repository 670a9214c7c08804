"""The domain: synthetic river trees and SWORD topology."""

from __future__ import annotations

import json
import time

import netCDF4
import numpy as np
import pytest

from confluence import contract
from confluence.domain import (
    Domain,
    domain_from_config,
    sword_topology,
    synthetic_topology,
)

SMALL = {
    "kind": "synthetic",
    "seed": 7,
    "continents": {
        "eu": {"basins": 3, "reaches_per_basin": [5, 30]},
        "na": {"basins": 4, "reaches_per_basin": [1, 40]},
    },
}


def hops_to_outlet(domain: Domain) -> np.ndarray:
    """Steps from each reach to its outlet; fails the test on a cycle."""
    dn = domain.downstream_index
    hops = np.zeros(len(domain), dtype=np.int64)
    current = np.arange(len(domain))
    for _ in range(len(domain) + 1):
        moving = dn[current] >= 0
        if not moving.any():
            return hops
        hops[moving] += 1
        current = np.where(moving, dn[current], current)
    raise AssertionError("the downstream links contain a cycle")


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = synthetic_topology(SMALL), synthetic_topology(SMALL)
    assert np.array_equal(a.reach_id, b.reach_id)
    assert np.array_equal(a.reach_dn, b.reach_dn)
    assert np.array_equal(a.reach_length, b.reach_length)
    c = synthetic_topology({**SMALL, "seed": 8})
    assert len(c) != len(a) or not np.array_equal(c.reach_dn, a.reach_dn)


def test_synthetic_ids_follow_the_sword_layout():
    d = synthetic_topology(SMALL)
    assert d.reach_id.dtype == np.int64 and d.reach_dn.dtype == np.int64
    assert d.reach_length.dtype == np.float64
    assert np.all(np.diff(d.reach_id) > 0)
    assert all(len(str(r)) == 11 for r in d.reach_id.tolist())
    assert np.all(d.reach_id % 10 == 1)  # type digit: river
    assert np.array_equal(d.basin_id, d.reach_id // 10**7)
    for rid, code, basin in zip(d.reach_id.tolist(), d.continent, d.basin_id.tolist(), strict=True):
        assert code == contract.continent_of(rid)
        assert str(basin)[0] == str(contract.CONTINENTS[code][0])
    assert d.continents == ["eu", "na"]
    assert len(d.basins) == 7
    assert np.all((d.reach_length >= 2_000) & (d.reach_length <= 40_000))


def test_each_basin_is_a_river_tree_with_one_outlet_and_confluences():
    d = synthetic_topology(
        {**SMALL, "continents": {"sa": {"basins": 5, "reaches_per_basin": [40, 80]}}}
    )
    ids, starts, stops = d.basin_bounds
    for lo, hi in zip(starts, stops, strict=True):
        assert (d.reach_dn[lo:hi] == 0).sum() == 1
        assert 40 <= hi - lo <= 80
    hops_to_outlet(d)  # no cycles: every reach reaches an outlet
    assert (d.upstream_count >= 2).sum() > 5  # confluences
    # downstream neighbours stay inside their basin
    linked = d.reach_dn != 0
    assert np.array_equal(d.reach_dn[linked] // 10**7, d.basin_id[linked])


def test_a_continent_does_not_change_when_another_one_does():
    alone = synthetic_topology(SMALL)
    changed = synthetic_topology(
        {
            **SMALL,
            "continents": {
                **SMALL["continents"],
                "na": {"basins": 9, "reaches_per_basin": [2, 3]},
                "af": {"basins": 2, "reaches_per_basin": [3, 4]},
            },
        }
    )
    eu_a, eu_b = alone.continent_slice("eu"), changed.continent_slice("eu")
    assert np.array_equal(alone.reach_id[eu_a], changed.reach_id[eu_b])
    assert np.array_equal(alone.reach_dn[eu_a], changed.reach_dn[eu_b])
    assert changed.continents == ["af", "eu", "na"]


def test_large_continent_spills_into_its_next_digit():
    d = synthetic_topology(
        {"seed": 1, "continents": {"as": {"basins": 1200, "reaches_per_basin": [1, 1]}}}
    )
    assert len(d.basins) == 1200
    assert set(np.unique(d.continent_digit).tolist()) == {3, 4}
    assert set(d.continent.tolist()) == {"as"}


def test_global_scale_builds_fast():
    spec = {
        "seed": 3,
        "continents": {
            c: {"basins": 220, "reaches_per_basin": [5, 1000]}
            for c in ("af", "eu", "as", "oc", "sa", "na")
        },
    }
    start = time.perf_counter()
    d = synthetic_topology(spec)
    elapsed = time.perf_counter() - start
    assert len(d) > 200_000
    assert elapsed < 2.0, f"{len(d)} reaches took {elapsed:.2f} s"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"continents": {"xx": {"basins": 1, "reaches_per_basin": [1, 2]}}},
            "unknown continent code(s) xx",
        ),
        ({"continents": {}}, "domain.continents is empty"),
        (
            {"continents": {"eu": {"basins": 1, "reaches_per_basin": [5, 2]}}},
            "domain.continents.eu.reaches_per_basin",
        ),
        ({"continents": {"eu": {"basins": 1000, "reaches_per_basin": [1, 2]}}}, "at most 999"),
    ],
)
def test_bad_synthetic_specs_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        synthetic_topology(spec)


def test_domain_rejects_inconsistent_topology():
    with pytest.raises(ValueError, match="ascending"):
        Domain(np.array([20010000021, 20010000011]), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="reach 20010000011: downstream reach 20010000099"):
        Domain(np.array([20010000011]), np.array([20010000099]), np.ones(1))
    with pytest.raises(ValueError, match="another basin"):
        Domain(np.array([20010000011, 20020000011]), np.array([20020000011, 0]), np.ones(2))
    with pytest.raises(ValueError, match="11-digit"):
        Domain(np.array([2001000001]), np.zeros(1), np.ones(1))


def test_subset_cuts_links_to_dropped_reaches():
    d = Domain(
        np.array([20010000011, 20010000021, 20010000031]),
        np.array([0, 20010000011, 20010000021]),
        np.array([1.0, 2.0, 3.0]),
    )
    s = d.subset(np.array([True, False, True]))
    assert s.reach_id.tolist() == [20010000011, 20010000031]
    assert s.reach_dn.tolist() == [0, 0]
    assert s.reach_length.tolist() == [1.0, 3.0]


def write_sword(path, reach_id, dn_rows, length):
    """A minimal SWORD v16 file: the reaches group with the variables the domain reads."""
    with netCDF4.Dataset(path, "w") as ds:
        g = ds.createGroup("reaches")
        g.createDimension("num_reaches", len(reach_id))
        g.createDimension("num_domain", 4)
        g.createVariable("reach_id", "i8", ("num_reaches",))[:] = reach_id
        g.createVariable("reach_length", "f8", ("num_reaches",))[:] = length
        g.createVariable("rch_id_dn", "i8", ("num_domain", "num_reaches"))[:] = dn_rows


@pytest.fixture
def sword_dir(tmp_path):
    # eu: basin 2101, a confluence (...11 <- ...21, ...31), plus a link into basin 2102 (cut).
    eu_ids = [21010000031, 21010000011, 21010000021, 21020000011]
    eu_dn = np.zeros((4, 4), dtype=np.int64)
    eu_dn[0] = [21010000011, 21020000011, 21010000011, 0]
    eu_dn[1] = [0, 21010000021, 0, 0]  # second neighbours are ignored
    write_sword(tmp_path / "eu_sword_v16.nc", eu_ids, eu_dn, [1000.0, 2000.0, 3000.0, 4000.0])
    na_ids = [74010000011, 74010000021]
    na_dn = np.zeros((4, 2), dtype=np.int64)
    na_dn[0] = [0, 74010000011]
    write_sword(tmp_path / "na_sword_v16.nc", na_ids, na_dn, [5000.0, 6000.0])
    return tmp_path


def test_sword_topology_reads_every_continent_file(sword_dir):
    d = sword_topology({"sword_dir": str(sword_dir)})
    assert d.reach_id.tolist() == [
        21010000011,
        21010000021,
        21010000031,
        21020000011,
        74010000011,
        74010000021,
    ]
    # first row only; the link from basin 2101 to basin 2102 is cut
    assert d.reach_dn.tolist() == [0, 21010000011, 21010000011, 0, 0, 74010000011]
    assert d.reach_length.tolist() == [2000.0, 3000.0, 1000.0, 4000.0, 5000.0, 6000.0]
    assert d.continents == ["eu", "na"]
    assert d.upstream_count.tolist() == [2, 0, 0, 0, 1, 0]


def test_sword_topology_with_reaches_of_interest(sword_dir, tmp_path):
    wanted = tmp_path / "reaches.json"
    wanted.write_text(json.dumps([21010000031, {"reach_id": 21010000021}, 74010000021]))
    d = domain_from_config({"kind": "sword", "sword_dir": str(sword_dir), "reaches": str(wanted)})
    assert d.reach_id.tolist() == [21010000021, 21010000031, 74010000021]
    assert d.reach_dn.tolist() == [0, 0, 0]  # their downstream reaches are not of interest

    wanted.write_text(json.dumps([21010000031, 29990000011]))
    with pytest.raises(ValueError, match="29990000011"):
        sword_topology({"sword_dir": str(sword_dir), "reaches": str(wanted)})


def test_sword_topology_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        sword_topology({"sword_dir": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="holds none of"):
        sword_topology({"sword_dir": str(tmp_path)})
    with netCDF4.Dataset(tmp_path / "af_sword_v16.nc", "w") as ds:
        ds.createGroup("nodes")
    with pytest.raises(ValueError, match="not a SWORD file"):
        sword_topology({"sword_dir": str(tmp_path)})


def test_domain_from_config_dispatches_on_kind():
    assert len(domain_from_config(SMALL)) == len(synthetic_topology(SMALL))
    with pytest.raises(ValueError, match="allowed values: synthetic, sword"):
        domain_from_config({"kind": "hydrosheds"})
