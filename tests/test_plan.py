"""Planning: inversion sets, chunks, work lists; properties over random river networks."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confluence import config as config_mod
from confluence import contract
from confluence.domain import Domain, domain_from_config, synthetic_topology
from confluence.plan import (
    build_plan,
    global_worklists,
    inversion_sets,
    plan_from_config,
    worklists,
    write_worklists,
)
from confluence.plan import cli as plan_cli

PROJECT = Path(__file__).resolve().parents[1]
CHUNK_ID = re.compile(r"^[a-z]{2}_[0-9]{4}(-[0-9]{4}|p[0-9]+)?$")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def domains(draw, continents=("eu", "as", "na")):
    """Random forests: each basin a tree whose reach i drains into any earlier reach."""
    ids, dns = [], []
    chosen = draw(st.lists(st.sampled_from(continents), min_size=1, max_size=3, unique=True))
    for code in sorted(chosen, key=list(contract.CONTINENTS).index):
        digit = contract.CONTINENTS[code][0]
        basins = draw(st.lists(st.integers(1, 999), min_size=1, max_size=6, unique=True))
        for basin in sorted(basins):
            size = draw(st.integers(1, 45))
            parents = [draw(st.integers(0, i - 1)) for i in range(1, size)]
            base = (digit * 1000 + basin) * 10**7 + 1
            ids += [base + 10 * (i + 1) for i in range(size)]
            dns += [0] + [base + 10 * (p + 1) for p in parents]
    return Domain(np.array(ids), np.array(dns), np.full(len(ids), 10_000.0))


sizes = st.tuples(st.integers(1, 6), st.integers(6, 60))


def check_plan(domain: Domain, chunk_size: int, max_set_size: int):
    plan = build_plan(domain, chunk_size, max_set_size)
    index = {rid: i for i, rid in enumerate(domain.reach_id.tolist())}
    dn = domain.downstream_index
    n_up = domain.upstream_count

    # every reach in exactly one chunk, and in exactly one set, of the same chunk
    in_chunks = Counter(r for c in plan.chunks for r in c.reach_ids)
    assert sorted(in_chunks) == domain.reach_id.tolist()
    assert set(in_chunks.values()) == {1}
    in_sets = Counter(r for c in plan.chunks for s in c.sets for r in s)
    assert in_sets == in_chunks
    for chunk in plan.chunks:
        assert list(chunk.reach_ids) == sorted(chunk.reach_ids)
        assert sorted(r for s in chunk.sets for r in s) == list(chunk.reach_ids)
        assert 0 < len(chunk.reach_ids) <= chunk_size
        assert CHUNK_ID.match(chunk.id), chunk.id
        assert {contract.continent_of(r) for r in chunk.reach_ids} == {chunk.continent}
        assert {r // 10**7 for r in chunk.reach_ids} == set(chunk.basin_ids)
        for s in chunk.sets:
            assert 1 <= len(s) <= max_set_size
            # adjacent along downstream links, with no confluence inside the set
            for up, down in zip(s, s[1:], strict=False):
                assert dn[index[up]] == index[down]
                assert n_up[index[down]] == 1
    assert len({c.id for c in plan.chunks}) == len(plan.chunks)

    # basins whole, unless larger than chunk_size: then only that basin's parts
    basin_size = Counter((domain.reach_id // 10**7).tolist())
    chunks_of_basin: dict[int, list] = {}
    for chunk in plan.chunks:
        for b in chunk.basin_ids:
            chunks_of_basin.setdefault(b, []).append(chunk)
    for basin, chunks in chunks_of_basin.items():
        if basin_size[basin] <= chunk_size:
            assert len(chunks) == 1 and chunks[0].part == (0, 0)
        else:
            assert all(c.basin_ids == (basin,) for c in chunks)
            assert [c.part for c in chunks] == [(k + 1, len(chunks)) for k in range(len(chunks))]
            assert [c.id for c in chunks] == [
                f"{chunks[0].continent}_{basin}p{k + 1}" for k in range(len(chunks))
            ]
            # near-equal parts: they differ by less than two sets
            part_sizes = [len(c.reach_ids) for c in chunks]
            assert max(part_sizes) - min(part_sizes) <= 2 * max_set_size
    # basins packed in ID order
    order = [b for c in plan.chunks for b in dict.fromkeys(c.basin_ids)]
    assert order == sorted(order)
    return plan


@FAST
@given(domain=domains(), sizes=sizes)
def test_plan_properties(domain, sizes):
    max_set_size, chunk_size = sizes
    check_plan(domain, chunk_size, max_set_size)


@FAST
@given(domain=domains(), sizes=sizes)
def test_plan_ids_are_stable(domain, sizes):
    max_set_size, chunk_size = sizes
    a = build_plan(domain, chunk_size, max_set_size)
    b = build_plan(domain, chunk_size, max_set_size)
    assert a.chunks == b.chunks


@FAST
@given(
    seed=st.integers(0, 10_000),
    other=st.integers(1, 8),
    sizes=sizes,
)
def test_chunk_ids_do_not_depend_on_other_continents(seed, other, sizes):
    max_set_size, chunk_size = sizes
    eu = {"basins": 4, "reaches_per_basin": [1, 40]}
    alone = build_plan(
        synthetic_topology({"seed": seed, "continents": {"eu": eu}}), chunk_size, max_set_size
    )
    spec = {
        "seed": seed,
        "continents": {
            "af": {"basins": other, "reaches_per_basin": [1, 30]},
            "eu": eu,
            "na": {"basins": other, "reaches_per_basin": [2, 50]},
        },
    }
    mixed = build_plan(synthetic_topology(spec), chunk_size, max_set_size)
    assert alone.chunks_of("eu") == mixed.chunks_of("eu")
    assert mixed.continents == ("af", "eu", "na")


@FAST
@given(domain=domains(), sizes=sizes)
def test_worklists_have_the_contract_shape(domain, sizes):
    max_set_size, chunk_size = sizes
    plan = build_plan(domain, chunk_size, max_set_size)
    for unit in plan.unit_ids():
        lists = worklists(plan, unit)
        assert list(lists) == ["reaches.json", "sets.json", "basin.json", "continent.json"]
        continent = plan.continent_of(unit)
        reaches = lists["reaches.json"]
        assert [r["reach_id"] for r in reaches] == plan.reach_ids(unit)
        for item in reaches:
            assert set(item) == {"reach_id", "sword", "swot", "sos"}
            assert item["sword"] == contract.sword_name(continent)
            assert item["swot"] == contract.swot_name(item["reach_id"])
            assert item["sos"] == contract.sos_priors_name(continent)
        by_id = {r["reach_id"]: r for r in reaches}
        for s in lists["sets.json"]:
            assert all(r == by_id[r["reach_id"]] for r in s)
        assert sorted(r["reach_id"] for s in lists["sets.json"] for r in s) == sorted(by_id)
        for b in lists["basin.json"]:
            assert set(b) == {"basin_id", "reach_id", "sword", "sos"}
            assert all(r // 10**7 == b["basin_id"] for r in b["reach_id"])
            assert b["sword"] == contract.sword_name(continent)
        assert sorted(r for b in lists["basin.json"] for r in b["reach_id"]) == sorted(by_id)
        assert lists["continent.json"] == [{continent: contract.CONTINENTS[continent]}]
        for scope, name in (
            ("reach", "reaches.json"),
            ("set", "sets.json"),
            ("basin", "basin.json"),
            ("continent", "continent.json"),
        ):
            assert plan.items(unit, scope) == len(lists[name])
        json.dumps(lists)  # plain JSON types only


def test_inversion_sets_follow_rivers_between_confluences():
    # 11 <- 21 <- 31 <- 41 and 11 <- 51 <- 61: a confluence at 11.
    ids = np.array([20010000011, 20010000021, 20010000031, 20010000041, 20010000051, 20010000061])
    dn = np.array([0, 20010000011, 20010000021, 20010000031, 20010000011, 20010000051])
    d = Domain(ids, dn, np.ones(6))
    sets = [ids[s].tolist() for s in inversion_sets(d, max_set_size=5)]
    assert sorted(sets) == sorted(
        [[20010000011], [20010000041, 20010000031, 20010000021], [20010000061, 20010000051]]
    )
    # a chain of 3 cut into sets of at most 2: near-equal parts (2 + 1)
    sets = [ids[s].tolist() for s in inversion_sets(d, max_set_size=2)]
    assert sorted(len(s) for s in sets) == [1, 1, 2, 2]


def test_a_cycle_in_bad_topology_still_gives_every_reach_one_set():
    ids = np.array([20010000011, 20010000021, 20010000031, 20010000041])
    dn = np.array([20010000021, 20010000031, 20010000011, 20010000011])  # 11 -> 21 -> 31 -> 11
    d = Domain(ids, dn, np.ones(4))
    members = sorted(int(i) for s in inversion_sets(d, 5) for i in s)
    assert members == [0, 1, 2, 3]


def test_a_large_basin_is_split_into_near_equal_parts():
    d = synthetic_topology(
        {"seed": 5, "continents": {"na": {"basins": 1, "reaches_per_basin": [230, 230]}}}
    )
    plan = check_plan(d, chunk_size=100, max_set_size=5)
    basin = int(d.basins[0])
    assert [c.id for c in plan.chunks] == [f"na_{basin}p{k}" for k in (1, 2, 3)]
    assert all(70 <= len(c.reach_ids) <= 85 for c in plan.chunks)
    assert plan.items(plan.chunks[0].id, "basin") == 1
    assert plan.items("na", "basin") == 1
    # the continent's basin.json holds the basin whole again
    (item,) = worklists(plan, "na")["basin.json"]
    assert len(item["reach_id"]) == 230


def test_chunk_ids_are_readable():
    spec = {
        "seed": 1,
        "continents": {"eu": {"basins": 6, "reaches_per_basin": [5, 12]}},
    }
    plan = build_plan(synthetic_topology(spec), chunk_size=30, max_set_size=5)
    for chunk in plan.chunks:
        first, last = chunk.basin_ids[0], chunk.basin_ids[-1]
        assert chunk.id == (f"eu_{first}" if first == last else f"eu_{first}-{last}")
    assert plan.unit_ids() == [c.id for c in plan.chunks] + ["eu"]
    assert plan.unit_ids("continent") == ["eu"]
    assert plan.unit_ids("set") == [c.id for c in plan.chunks]
    with pytest.raises(ValueError, match="allowed values: reach, set, basin, continent"):
        plan.items("eu", "reachs")
    with pytest.raises(KeyError, match="unknown chunk 'eu_0000'"):
        plan.chunk("eu_0000")


def test_bad_sizes_are_refused():
    d = synthetic_topology(
        {"seed": 1, "continents": {"eu": {"basins": 1, "reaches_per_basin": [5, 5]}}}
    )
    with pytest.raises(ValueError, match="at most 10,000 children"):
        build_plan(d, chunk_size=20_000)
    with pytest.raises(ValueError, match="must fit in one chunk"):
        build_plan(d, chunk_size=4, max_set_size=5)


def test_write_worklists_and_global_lists(tmp_path):
    config = config_mod.load()
    plan = plan_from_config(config)
    unit = plan.chunks[0].id
    written = write_worklists(plan, unit, tmp_path / unit)
    assert [p.name for p in written] == [
        "reaches.json",
        "sets.json",
        "basin.json",
        "continent.json",
    ]
    for path in written:
        assert json.loads(path.read_text()) == worklists(plan, unit)[path.name]
    everything = global_worklists(plan)
    assert len(everything["reaches.json"]) == plan.reach_count
    assert len(everything["sets.json"]) == plan.set_count
    assert everything["continent.json"] == [{c: contract.CONTINENTS[c]} for c in plan.continents]


def test_demo_plan_shows_chunks_and_a_split_basin():
    plan = plan_from_config(config_mod.load())
    assert 120 <= plan.reach_count <= 180
    assert plan.continents == ("eu", "na")
    assert len(plan.chunks) >= 4
    assert any(c.part[0] for c in plan.chunks)
    assert any(len(c.basin_ids) > 1 for c in plan.chunks)
    assert plan_from_config(config_mod.load()) is plan  # cached for Snakemake's parsing


def test_global_plan_is_fast():
    config = config_mod.load([str(PROJECT / "config" / "global.yaml")])
    run = config["run"]
    start = time.perf_counter()
    plan = build_plan(domain_from_config(config["domain"]), run["chunk_size"], run["max_set_size"])
    elapsed = time.perf_counter() - start
    assert 240_000 <= plan.reach_count <= 256_000
    assert len(plan.continents) == 6
    assert max(len(c.reach_ids) for c in plan.chunks) <= 1000
    assert elapsed < 3.0, f"planning {plan.reach_count} reaches took {elapsed:.2f} s"


def run_cli(capsys, *argv):
    from confluence.cli import build_parser

    args = build_parser().parse_args(["plan", *argv])
    code = plan_cli(args)
    return code, capsys.readouterr()


def test_cli_prints_the_plan(capsys):
    code, out = run_cli(capsys)
    assert code == 0
    plan = plan_from_config(config_mod.load())
    for chunk in plan.chunks:
        assert chunk.id in out.out
    assert re.search(r"metroman\s+flpe\s+set\s+5\s+" + str(plan.set_count), out.out)
    assert re.search(r"priors\s+priors\s+continent\s+2\s+2", out.out)


def test_cli_summarises_the_global_plan(capsys):
    code, out = run_cli(capsys, "--configfile", str(PROJECT / "config" / "global.yaml"))
    assert code == 0
    assert "more chunks" in out.out
    assert len(out.out.splitlines()) < 120


def test_cli_json_and_write(capsys, tmp_path):
    code, out = run_cli(capsys, "--json", "--write", str(tmp_path))
    assert code == 0
    doc = json.loads(out.out)
    plan = plan_from_config(config_mod.load())
    assert [c["id"] for c in doc["chunks"]] == [c.id for c in plan.chunks]
    assert {m["module"] for m in doc["modules"]} >= {"moi", "metroman"}
    for unit in plan.unit_ids():
        assert (tmp_path / unit / "reaches.json").is_file()
    assert len(json.loads((tmp_path / "reaches.json").read_text())) == plan.reach_count


def test_cli_reports_a_bad_config(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {chunk_size: 20000}\n")
    code, out = run_cli(capsys, "--configfile", str(bad))
    assert code == 2
    assert "run.chunk_size: 20000 is above the maximum 10000" in out.err


def test_argparse_namespace_is_enough():
    # the `confluence plan` subcommand hands cli() a plain namespace
    args = argparse.Namespace(configfile=None, write=None, json=True)
    assert plan_cli(args) == 0


def test_cli_lists_only_the_selected_flpe_algorithms(capsys, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("flpe: {algorithms: [momma, metroman]}\n")
    code, out = run_cli(capsys, "--configfile", str(mine))
    assert code == 0
    flpe_rows = [line.split()[0] for line in out.out.splitlines() if " flpe " in line]
    assert flpe_rows == ["metroman", "momma"]
