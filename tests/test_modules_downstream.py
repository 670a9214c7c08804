"""The downstream modules through the real CLI, on a tiny mount tree of real NetCDF files.

Domain: basin 7401 with reaches A and B flowing into C, and D alone (no FLPE result).
FLPE results (geobam, momma, and a MetroMan set file A-C) are written with ncio from known
parameters; the SoS has a calibration gauge on A and a validation gauge on C. Every module
runs with the mount tree its configuration gives it (config/config.yaml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from confluence import cli, config, contract, mounts, ncio
from confluence.science import flowlaws
from confluence.science.diagnostics import REASON_BITS
from confluence.science.types import FlpeResult

A, B, C, D = 74010000011, 74010000021, 74010000031, 74010000041
REACHES = [A, B, C, D]
UNIT = "na_7401"
WORKLIST = f"worklists/{UNIT}/reaches.json"
BASINS = f"worklists/{UNIT}/basin.json"
CONTINENTS = "worklists/na/continent.json"
NT, NX = 16, 3
DAY = 86400.0
START = (dt.date(2023, 7, 26) - dt.date(2000, 1, 1)).days * DAY
#: True Manning parameters per reach; widths grow downstream.
TRUTH = {A: (0.03, 150.0, 60.0), B: (0.035, 100.0, 40.0), C: (0.03, 300.0, 100.0)}
DARK_OBSERVATION = 4  # index of an observation with dark_frac 0.9
GEOBAM_N_FACTOR = {A: 1.2, B: 1.2, C: 3.0}


def dataset(path) -> netCDF4.Dataset:
    """A file opened for reading with fill values left as stored (no masked arrays)."""
    ds = netCDF4.Dataset(path)
    ds.set_auto_mask(False)
    return ds


@pytest.fixture(scope="module")
def module_config():
    return config.load()["modules"]


def _reach_series(reach_id: int, seed: int):
    rng = np.random.default_rng(seed)
    n, a0, width = TRUTH.get(reach_id, (0.03, 200.0, 80.0))
    flow_phase = np.sin(np.linspace(0, 3, NT))
    dA = 0.5 * a0 * flow_phase + rng.normal(0, 2, NT)
    w = width + 10 * flow_phase + rng.normal(0, 1, NT)
    s = 1e-4 * (1 + 0.05 * rng.normal(size=NT))
    h = 10 + dA / w
    time = START + np.arange(NT) * 9.5 * DAY + 3600.0 * 7
    return time, w, h, s, dA


def _swot(reach_id: int, seed: int) -> ncio.SwotReach:
    time, w, h, s, dA = _reach_series(reach_id, seed)
    ones, zeros = np.ones(NT), np.zeros(NT)
    dark = zeros.copy()
    dark[DARK_OBSERVATION] = 0.9
    node = {
        "time": np.tile(time, (NX, 1)),
        "width": np.tile(w, (NX, 1)),
        "width_u": np.full((NX, NT), 5.0),
        "wse": np.tile(h, (NX, 1)),
        "wse_u": np.full((NX, NT), 0.1),
        "slope2": np.tile(s, (NX, 1)),
        "slope2_u": np.full((NX, NT), 1e-5),
        "d_x_area": np.tile(dA, (NX, 1)),
        "d_x_area_u": np.full((NX, NT), 10.0),
    }
    return ncio.SwotReach(
        reach_id=reach_id,
        time=time,
        time_str=ncio.time_to_str(time),
        width=w,
        width_u=5 * ones,
        wse=h,
        wse_u=0.1 * ones,
        slope2=s,
        slope2_u=1e-5 * ones,
        d_x_area=dA,
        d_x_area_u=10 * ones,
        reach_q=zeros,
        dark_frac=dark,
        ice_clim_f=zeros,
        ice_dyn_f=zeros,
        n_good_nod=NX * ones,
        obs_frac_n=ones,
        xtrk_dist=20000 * ones,
        node_id=reach_id * 10 + np.arange(NX),
        node=node,
    )


def _true_q(reach_id: int, time, w, h, s, dA):
    n, a0, _ = TRUTH[reach_id]
    return flowlaws.discharge("manning", {"n": n, "A0": a0}, w, s, dA, h)


def _flpe(reach_id, algorithm, law, params, seed):
    time, w, h, s, dA = _reach_series(reach_id, seed)
    q = flowlaws.discharge(law, params, w, s, dA, h)
    q[DARK_OBSERVATION] = np.nan  # the FLPE did not use the rejected observation
    return FlpeResult(algorithm, law, reach_id, time, q, 0.3 * q, dict(params))


def build_efs(base: Path) -> Path:
    """The input, flpe file systems of the test domain under ``base``."""
    efs = base / "efs"
    inp = efs / "input"
    seeds = {r: i for i, r in enumerate(REACHES)}
    for r in REACHES:
        ncio.write_swot(inp / "swot" / contract.swot_name(r), _swot(r, seeds[r]))

    item = {"sword": contract.sword_name("na"), "sos": contract.sos_priors_name("na")}
    lists = inp / "worklists" / UNIT
    lists.mkdir(parents=True)
    reach_items = [{"reach_id": r, "swot": contract.swot_name(r), **item} for r in REACHES]
    (lists / "reaches.json").write_text(json.dumps(reach_items))
    sets = [[reach_items[0], reach_items[2]], [reach_items[1]], [reach_items[3]]]
    (lists / "sets.json").write_text(json.dumps(sets))
    (lists / "basin.json").write_text(json.dumps([{"basin_id": 7401, "reach_id": REACHES, **item}]))
    (inp / "worklists" / "na").mkdir()
    (inp / "worklists" / "na" / "continent.json").write_text(json.dumps([{"na": [7, 8, 9]}]))

    # SWORD: A -> C, B -> C, C and D outlets.
    up = np.zeros((4, 4), np.int64)
    dn = np.zeros((4, 4), np.int64)
    up[0, 2], up[1, 2] = A, B
    dn[0, 0], dn[0, 1] = C, C
    nodes = np.array([r * 10 + k for r in REACHES for k in range(NX)])
    ncio.write_sword(
        inp / "sword" / contract.sword_name("na"),
        ncio.Sword(
            reach_id=np.array(REACHES),
            reach_length=np.full(4, 10000.0),
            dist_out=np.array([20000.0, 20000, 10000, 10000]),
            wse=np.full(4, 10.0),
            width=np.array([60.0, 40, 100, 80]),
            slope=np.full(4, 0.1),
            facc=np.array([100.0, 50, 200, 80]),
            rch_id_up=up,
            rch_id_dn=dn,
            n_rch_up=np.array([0, 0, 2, 0]),
            n_rch_down=np.array([1, 1, 0, 0]),
            node_id=nodes,
            node_reach_id=np.repeat(REACHES, NX),
            node_dist_out=np.zeros(nodes.size),
        ),
    )

    # SoS with daily gauges on A (calibration) and C (validation) over the observation period.
    days = np.arange(int(START // DAY), int(START // DAY) + NT * 10)
    gauge_q = []
    for r in (A, C):
        time, w, h, s, dA = _reach_series(r, seeds[r])
        truth = _true_q(r, time, w, h, s, dA)
        gauge_q.append(np.interp(days * DAY, time, truth))
    model = {
        "mean_q": np.array([80.0, 40, 150, 50]),
        "min_q": np.array([5.0, 2, 10, 3]),
        "max_q": np.array([800.0, 400, 1500, 500]),
        "two_year_return_q": np.array([300.0, 150, 600, 200]),
        "flow_duration_q": np.array([60.0, 30, 120, 40]),
    }
    sos = ncio.Sos(
        reach_id=np.array(REACHES),
        x=np.array([-90.0, -90.1, -90.2, -91.0]),
        y=np.array([40.0, 40.1, 40.2, 41.0]),
        node_id=nodes,
        node_reach_id=np.repeat(REACHES, NX),
        model=model,
        gbpriors_reach={"logn_hat": np.log(np.full(4, 0.03))},
        gbpriors_node={"logn_hat": np.log(np.full(nodes.size, 0.03))},
        gauges={
            "USGS": ncio.GaugeGroup(
                agency="USGS",
                reach_id=np.array([A, C]),
                q=np.array(gauge_q),
                qt=np.tile(days + ncio.EPOCH_ORDINAL, (2, 1)).astype(float),
                cal=np.array([True, False]),
                station_id=["01000001", "01000003"],
            )
        },
        attrs={"run_type": "constrained"},
    )
    ncio.write_sos(inp / "sos" / contract.sos_priors_name("na"), sos)

    # FLPE results: geobam (Manning, n too high: 20 % on A and B, three times on C, so that
    # its C carries less than A and B bring), momma, and one MetroMan set file A-C.
    flpe = efs / "flpe"
    for r in (A, B, C):
        n, a0, _ = TRUTH[r]
        ncio.write_flpe(
            flpe / "geobam" / f"{r}_geobam.nc",
            [_flpe(r, "geobam", "manning", {"n": GEOBAM_N_FACTOR[r] * n, "A0": a0}, seeds[r])],
        )
        ncio.write_flpe(
            flpe / "momma" / f"{r}_momma.nc",
            [_flpe(r, "momma", "momma", {"B": 6.0, "Hb": 11.0}, seeds[r])],
        )
    ncio.write_flpe(
        flpe / "metroman" / f"{A}-{C}_metroman.nc",
        [
            _flpe(r, "metroman", "metroman", {"A0": TRUTH[r][1], "na": 0.03, "x1": 0.0}, seeds[r])
            for r in (A, C)
        ],
    )
    return efs


def run_module(name, index, worklist, efs, module_config, monkeypatch, *extra):
    """One item of a module through the CLI, in the mount tree its configuration describes.

    Returns the exit code and what the module wrote to stderr.
    """
    jobs = Path(efs).parent / "jobs"
    job = jobs / f"{name}-{index}-{len(list(jobs.glob('*'))) if jobs.exists() else 0}"
    root = mounts.build_mount_root(module_config[name]["mounts"], Path(efs), job)
    monkeypatch.setenv(contract.MOUNT_ROOT_ENV, str(root))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["module", name, "-i", str(index), worklist, *extra])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def chain(tmp_path_factory, module_config):
    """The whole downstream chain run once on the test domain; yields the EFS directory."""
    efs = build_efs(tmp_path_factory.mktemp("chain"))
    codes = {}
    steps = [("prediagnostics", i, WORKLIST) for i in range(4)]
    steps += [("postdiagnostics_flpe", i, WORKLIST) for i in range(4)]
    steps += [("moi", 0, BASINS)]
    for name in ("postdiagnostics_moi", "offline", "validation"):
        steps += [(name, i, WORKLIST) for i in range(4)]
    steps += [("output", 0, CONTINENTS, "constrained")]
    with pytest.MonkeyPatch.context() as mp:
        for name, index, worklist, *extra in steps:
            code, err = run_module(name, index, worklist, efs, module_config, mp, *extra)
            codes[(name, index)] = (code, err)
    return efs, codes


def test_chain_exit_codes(chain):
    _, codes = chain
    d = REACHES.index(D)
    for (name, index), (code, err) in codes.items():
        expected = 3 if index == d and name not in ("prediagnostics", "moi", "output") else 0
        assert code == expected, (name, index, err)


def test_prediagnostics_layout_and_swot_untouched(tmp_path, module_config, monkeypatch):
    efs = build_efs(tmp_path)
    swot = efs / "input" / "swot" / contract.swot_name(A)
    before = swot.read_bytes()
    code, err = run_module("prediagnostics", 0, WORKLIST, efs, module_config, monkeypatch)
    assert code == 0, err
    assert swot.read_bytes() == before
    path = efs / "diagnostics" / "prediagnostics" / f"{A}_prediagnostics.nc"
    with dataset(path) as ds:
        assert ds.dimensions["nt"].size == NT
        assert ds["valid"].dtype == np.int8
        valid = ds["valid"][:]
        reasons = ds["reasons"][:]
        assert "dark_water" in ds["reasons"].flag_meanings.split()
        assert list(ds["reasons"].flag_masks) == list(REASON_BITS.values())
        assert np.allclose(ds["time"][:], ncio.read_swot(swot).time)
    assert valid[DARK_OBSERVATION] == 0
    assert reasons[DARK_OBSERVATION] & REASON_BITS["dark_water"]
    assert valid.sum() >= NT - 3
    # Thresholds are module arguments: a laxer dark-water limit keeps the observation.
    code, err = run_module(
        "prediagnostics", 0, WORKLIST, efs, module_config, monkeypatch, "max_dark_frac=0.95"
    )
    assert code == 0, err
    with dataset(path) as ds:
        assert ds["valid"][DARK_OBSERVATION] == 1 and ds.max_dark_frac == 0.95
    code, err = run_module("prediagnostics", 0, WORKLIST, efs, module_config, monkeypatch, "x=1")
    assert code == 1 and "max_dark_frac=" in err


def test_postdiagnostics_flpe_layout(chain):
    efs, _ = chain
    diag = efs / "diagnostics" / "postdiagnostics" / "reach" / f"{A}_flpe_diag.nc"
    with dataset(diag) as ds:
        assert set(ds.groups) == {"geobam", "metroman", "momma"}
        assert ds.groups["geobam"]["realism"].shape == (NT,)
        assert int(ds.groups["geobam"]["stability_flag"][...]) == -1  # no previous run given
    with dataset(efs / "diagnostics" / "postdiagnostics" / "reach" / f"{B}_flpe_diag.nc") as ds:
        assert set(ds.groups) == {"geobam", "momma"}  # B is in no MetroMan set file


def test_moi_integrates_the_basin(chain):
    efs, _ = chain
    assert not (efs / "moi" / f"{D}_integrator.nc").exists()
    qbar = {}
    for r in (A, B, C):
        with dataset(efs / "moi" / f"{r}_integrator.nc") as ds:
            assert ds.topology == "sword"
            for algorithm, group in ds.groups.items():
                qbar[r, algorithm] = float(group["qbar_basinScale"][...])
                q = np.asarray(group["q"][:])
                q = q[q != contract.FLOAT_FILL]
                assert q.mean() == pytest.approx(qbar[r, algorithm], rel=1e-3)
                assert q.size == NT - 1  # the rejected observation stays out
                law = group.flow_law
                names = set(flowlaws.PARAMETERS[law])
                assert names <= set(group.variables)
                assert {f"flpe_{n}" for n in names} <= set(group.variables)
                if law == "manning":
                    assert float(group["n"][...]) >= 0.001
    for algorithm in ("geobam", "momma"):
        assert qbar[C, algorithm] >= qbar[A, algorithm] + qbar[B, algorithm] - 1e-6
    # geobam's C carried less than A and B bring: MOI raised it to their sum and refit n.
    with dataset(efs / "moi" / f"{C}_integrator.nc") as ds:
        geobam = ds.groups["geobam"]
        assert float(geobam["qbar_reachScale"][...]) < qbar[A, "geobam"] + qbar[B, "geobam"]
        assert qbar[C, "geobam"] == pytest.approx(qbar[A, "geobam"] + qbar[B, "geobam"])
        assert float(geobam["n"][...]) < float(geobam["flpe_n"][...])
        assert geobam.refit_ok == 1


def test_offline_and_consensus(chain):
    efs, _ = chain
    with dataset(efs / "offline" / f"{C}_offline.nc") as ds:
        assert set(ds.groups) == {"consensus", "geobam", "metroman", "momma"}
        qs = {name: np.asarray(g["q"][:]) for name, g in ds.groups.items()}
        assert ds.groups["geobam"].parameter_source == "moi"
        q_u = np.asarray(ds.groups["geobam"]["q_u"][:])
    ok = qs["geobam"] != contract.FLOAT_FILL
    stack = np.vstack([qs[a][ok] for a in ("geobam", "metroman", "momma")])
    assert np.allclose(qs["consensus"][ok], np.median(stack, axis=0))
    assert np.all(q_u[ok] >= 0.4 * qs["geobam"][ok])


def test_validation_stats_and_figures(chain):
    efs, _ = chain
    stats = efs / "validation" / "stats"
    figs = efs / "validation" / "figs"
    with dataset(stats / f"{A}_validation.nc") as ds:
        labels = list(ds["label"][:])
        n = dict(zip(labels, ds["n"][:], strict=True))
        assert ds.gauge_type == "calibration" and ds.cal == 1
        nse = dict(zip(labels, ds["nse"][:], strict=True))
    assert n["flpe/geobam"] == NT - 1 and n["offline/consensus"] == NT - 1
    assert {"flpe/geobam", "moi/geobam", "offline/geobam", "offline/consensus"} <= set(labels)
    assert nse["flpe/geobam"] < 1.0
    with dataset(stats / f"{C}_validation.nc") as ds:
        assert ds.gauge_type == "validation" and ds.cal == 0
        rmse = dict(zip(list(ds["label"][:]), ds["rmse"][:], strict=True))
    # Mass conservation moved geobam's C towards the truth.
    assert rmse["moi/geobam"] < rmse["flpe/geobam"]
    with dataset(stats / f"{B}_validation.nc") as ds:
        assert ds.gauged == 0 and set(ds["n"][:]) == {0}
    assert sorted(p.name for p in figs.glob(f"{A}_*.png")) == [
        f"{A}_consensus.png",
        f"{A}_geobam.png",
        f"{A}_metroman.png",
        f"{A}_momma.png",
    ]
    assert not list(figs.glob(f"{B}_*"))


def test_output_gathers_every_module(chain):
    efs, _ = chain
    path = efs / "output" / "sos" / contract.sos_results_name("na")
    with dataset(path) as ds:
        assert ds.run_type == "constrained"
        assert list(ds["reaches"]["reach_id"][:]) == REACHES
        expected = {
            "reaches",
            "prediagnostics",
            "geobam",
            "momma",
            "metroman",
            "postdiagnostics_flpe",
            "moi",
            "postdiagnostics_moi",
            "offline",
            "validation",
        }
        assert set(ds.groups) == expected
        q = ds["geobam"]["q"][:]
        assert q.shape == (4, NT)
        assert np.all(q[3] == contract.FLOAT_FILL)  # D has no result
        assert np.count_nonzero(q[0] != contract.FLOAT_FILL) == NT - 1
        assert (
            ds["moi"]["geobam"]["qbar_basinScale"][2] >= ds["moi"]["geobam"]["qbar_basinScale"][0]
        )
        assert list(ds["validation"]["gauged"][:]) == [1, 0, 1, contract.INT_FILL]
        assert ds["validation"]["flpe"]["geobam"]["n"][0] == NT - 1
        assert ds["prediagnostics"]["valid"][0, DARK_OBSERVATION] == 0


def test_upstream_missing_exit_code_3(tmp_path, module_config, monkeypatch):
    efs = build_efs(tmp_path)
    d = REACHES.index(D)
    for name in ("postdiagnostics_flpe", "offline", "validation", "postdiagnostics_moi"):
        code, err = run_module(name, d, WORKLIST, efs, module_config, monkeypatch)
        assert code == contract.EXIT_UPSTREAM_MISSING, (name, err)
        assert str(D) in err
    shutil.rmtree(efs / "flpe")
    code, err = run_module("moi", 0, BASINS, efs, module_config, monkeypatch)
    assert code == contract.EXIT_UPSTREAM_MISSING and "basin 7401" in err


def test_corrupt_input_fails_naming_the_reach(tmp_path, module_config, monkeypatch):
    efs = build_efs(tmp_path)
    geobam = efs / "flpe" / "geobam" / f"{A}_geobam.nc"
    geobam.write_bytes(geobam.read_bytes()[:200])
    for name, worklist, index in (
        ("postdiagnostics_flpe", WORKLIST, 0),
        ("offline", WORKLIST, 0),
        ("moi", BASINS, 0),
    ):
        code, err = run_module(name, index, worklist, efs, module_config, monkeypatch)
        assert code == 1, (name, err)
        assert f"reach {A}" in err and "geobam" in err
    swot = efs / "input" / "swot" / contract.swot_name(B)
    swot.write_bytes(b"not a netcdf file")
    code, err = run_module("prediagnostics", 1, WORKLIST, efs, module_config, monkeypatch)
    assert code == 1 and f"reach {B}" in err
    assert not (efs / "diagnostics" / "prediagnostics" / f"{B}_prediagnostics.nc").exists()


def test_stability_against_a_previous_run(tmp_path, module_config, monkeypatch):
    efs = build_efs(tmp_path)
    previous = tmp_path / "previous_flpe"
    shutil.copytree(efs / "flpe", previous)
    (result,) = ncio.read_flpe(previous / "geobam" / f"{A}_geobam.nc")
    result.q = result.q * 1.5
    ncio.write_flpe(previous / "geobam" / f"{A}_geobam.nc", [result])
    code, err = run_module(
        "postdiagnostics_flpe",
        0,
        WORKLIST,
        efs,
        module_config,
        monkeypatch,
        f"previous={previous}",
    )
    assert code == 0, err
    with dataset(efs / "diagnostics" / "postdiagnostics" / "reach" / f"{A}_flpe_diag.nc") as ds:
        change = float(ds.groups["geobam"]["relative_change"][...])
        assert change == pytest.approx(1 / 3)  # the previous mean was 1.5 times today's
        assert int(ds.groups["geobam"]["stability_flag"][...]) == 1
        assert int(ds.groups["momma"]["stability_flag"][...]) == 0
    code, err = run_module(
        "postdiagnostics_flpe", 0, WORKLIST, efs, module_config, monkeypatch, "bogus"
    )
    assert code == 1 and "previous=" in err
