"""Pure science of the downstream modules: diagnostics, MOI, offline, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confluence.science import diagnostics, flowlaws, moi, offline, validation
from confluence.science.diagnostics import REASON_BITS
from confluence.science.types import FlpeResult, Observations

DAY = 86400.0


def make_obs(seed=0, nt=24, width=120.0, slope=1e-4, dA_sd=60.0, reach_id=1):
    rng = np.random.default_rng(seed)
    w = width + rng.normal(0, 6, nt)
    s = slope * (1 + 0.1 * rng.normal(size=nt))
    dA = rng.normal(0, dA_sd, nt)
    h = 20 + dA / w
    ones = np.ones(nt)
    return Observations(
        reach_id=reach_id,
        time=np.arange(nt) * 10 * DAY,
        width=w,
        wse=h,
        slope=s,
        dA=dA,
        width_u=5 * ones,
        wse_u=0.1 * ones,
        slope_u=1e-5 * ones,
        dA_u=10 * ones,
        valid=np.ones(nt, bool),
    )


LAW_PARAMS = {
    "manning": {"n": 0.03, "A0": 300.0},
    "hivdi": {"A0": 300.0, "alpha": 30.0, "beta": 0.2},
    "metroman": {"A0": 300.0, "na": 0.03, "x1": 0.1},
    "momma": {"B": 14.0, "Hb": 21.0},
}


def flpe_result(obs, law, params, algorithm="algo", u=0.3):
    q = flowlaws.discharge(law, params, obs.width, obs.slope, obs.dA, obs.wse)
    return FlpeResult(algorithm, law, obs.reach_id, obs.time, q, u * q, dict(params))


# --------------------------------------------------------------------------------------------
# Prediagnostics


def test_tukey_bounds_by_hand():
    # 1..8 and 100: Q1 = 3, Q3 = 7 (linear interpolation over 9 values), IQR = 4.
    values = [1, 2, 3, 4, 5, 6, 7, 8, 100]
    assert diagnostics.tukey_bounds(values) == (3 - 6, 7 + 6)
    assert diagnostics.tukey_outliers(values).tolist() == [False] * 8 + [True]
    assert diagnostics.tukey_bounds([1, 2, 3]) == (-np.inf, np.inf)  # too few for quartiles


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=30))
def test_tukey_never_flags_values_between_the_quartiles(values):
    data = np.asarray(values)
    q1, q3 = np.percentile(data, [25, 75])
    flagged = diagnostics.tukey_outliers(data)
    assert not flagged[(data >= q1) & (data <= q3)].any()
    lo, hi = diagnostics.tukey_bounds(data)
    assert np.array_equal(flagged, (data < lo) | (data > hi))


def test_prediagnose_thresholds_and_reasons():
    n = 12
    width = np.full(n, 100.0) + np.arange(n) * 0.1
    wse = np.full(n, 10.0) + np.arange(n) * 0.01
    slope = np.full(n, 1e-4) + np.arange(n) * 1e-7
    dA = np.zeros(n)
    dark = np.zeros(n)
    frac = np.ones(n)
    ice_clim = np.zeros(n)
    ice_dyn = np.zeros(n)
    good = np.full(n, 10.0)
    dark[1], dark[2] = 0.61, 0.6  # rejected, kept (threshold is "> 0.6")
    frac[3], frac[4] = 0.39, 0.4  # rejected, kept ("< 0.4")
    ice_clim[5] = 2  # climatologically frozen
    ice_dyn[6] = 1  # ice seen, partly
    ice_clim[0] = 1  # uncertain climatology alone does not reject
    good[7] = 2  # fewer than 3 good nodes
    width[8] = np.nan
    slope[9] = -1e-5
    width[10] = 500.0  # far outside the fences of the others
    good[11] = np.nan  # a missing flag does not reject
    valid, reasons = diagnostics.prediagnose(
        width,
        wse,
        slope,
        dA,
        ice_clim_f=ice_clim,
        ice_dyn_f=ice_dyn,
        dark_frac=dark,
        obs_frac_n=frac,
        n_good_nod=good,
    )
    expected = np.zeros(n, int)
    expected[1] = REASON_BITS["dark_water"]
    expected[3] = REASON_BITS["low_observed_fraction"]
    expected[5] = expected[6] = REASON_BITS["ice"]
    expected[7] = REASON_BITS["few_good_nodes"]
    expected[8] = REASON_BITS["fill_value"]
    expected[9] = REASON_BITS["nonpositive_width_or_slope"] | REASON_BITS["slope_outlier"]
    expected[10] = REASON_BITS["width_outlier"]
    assert reasons.tolist() == expected.tolist()
    assert valid.tolist() == (expected == 0).tolist()
    assert diagnostics.decode_reasons(reasons[9]) == ["nonpositive_width_or_slope", "slope_outlier"]


def test_prediagnose_fences_come_from_observations_that_passed_the_flags():
    # Eight good widths 100..107 and one wide one (120); six ice-covered ones at 118-123
    # would, if counted, move Q3 up and hide the wide observation.
    width = np.array(
        [100, 101, 102, 103, 104, 105, 106, 107, 120] + [118, 119, 120, 121, 122, 123.0]
    )
    ice = np.array([0] * 9 + [2] * 6)
    n = width.size
    valid, reasons = diagnostics.prediagnose(
        width, np.full(n, 5.0), np.full(n, 1e-4), np.zeros(n), ice_clim_f=ice
    )
    assert reasons[8] == REASON_BITS["width_outlier"]
    assert not diagnostics.tukey_outliers(width)[8]  # counting the ice ones would hide it
    assert valid.tolist() == [True] * 8 + [False] * 7


def test_flag_meanings_are_cf_masks():
    masks, meanings = diagnostics.flag_meanings()
    assert len(masks) == len(meanings.split()) == len(REASON_BITS)
    assert all(m & (m - 1) == 0 for m in masks)  # one bit each


# --------------------------------------------------------------------------------------------
# Postdiagnostics


def test_realism_flags_by_hand():
    q = [100, 5, 5, 2000, np.nan, 50]
    u = [10, 4, 6, 500, 1, np.nan]
    flags = diagnostics.realism_flags(q, u, min_q=10, max_q=1000)
    # 5 + 4 < 10 is outside; 5 + 6 reaches 10; 2000 - 500 > 1000; NaN Q is never flagged.
    assert flags.tolist() == [False, True, False, True, False, False]


def test_stability_on_common_dates():
    change = diagnostics.relative_change([0, 1, 2], [110, 110, 110], [1, 2, 3], [100, 100, 50])
    assert change == pytest.approx(0.1)  # means over dates 1 and 2: 110 vs 100
    assert diagnostics.stability_flag(change) == 0
    assert diagnostics.stability_flag(change, tolerance=0.05) == 1
    assert diagnostics.stability_flag(0.26) == 1  # default tolerance 25 %
    no_overlap = diagnostics.relative_change([0, 1], [1, 1], [5, 6], [1, 1])
    assert math.isnan(no_overlap)
    assert diagnostics.stability_flag(no_overlap) == -1


# --------------------------------------------------------------------------------------------
# MOI


def test_basin_means_without_topology_is_the_basin_mean():
    means = {1: 100.0, 2: 50.0, 3: np.nan, 4: 150.0}
    assert moi.basin_means(means) == {1: 100.0, 2: 100.0, 3: 100.0, 4: 100.0}


def test_basin_means_keep_consistent_means_and_link_through_unobserved_reaches():
    # 1 -> 2 -> 5 <- 4 <- 3 ; 5 -> 6. Reach 2 unobserved.
    upstream = {1: [], 2: [1], 3: [], 4: [3], 5: [2, 4], 6: [5]}
    means = {1: 100.0, 2: np.nan, 3: 40.0, 4: 60.0, 5: 120.0, 6: 200.0}
    basin = moi.basin_means(means, upstream)
    assert basin[1] == basin[2] == 100.0  # one segment with the unobserved reach
    assert basin[3] == basin[4] == 50.0  # segment mean of 40 and 60
    assert basin[5] == basin[6] == 160.0  # segment {5, 6}: mean 160 >= 100 + 50, unchanged
    means[6] = 20.0  # now the segment mean (70) is below the inflow (150)
    basin = moi.basin_means(means, upstream)
    assert basin[5] == pytest.approx(basin[1] + basin[3], rel=1e-9)  # mass conserved exactly
    assert basin[5] >= basin[1] + basin[3]
    assert basin[1] < 100.0 and basin[3] < 50.0 and basin[5] > 70.0  # the error is shared


def test_basin_means_share_the_error_by_hand():
    # 1 -> 3 <- 2 with 2 unobserved: b3 >= b1. Equal weights meet at the geometric mean.
    upstream = {1: [], 2: [], 3: [1, 2]}
    basin = moi.basin_means({1: 200.0, 2: np.nan, 3: 50.0}, upstream)
    assert basin[1] == pytest.approx(100.0) and basin[3] == pytest.approx(100.0)
    assert np.isnan(basin[2])  # an unobserved headwater carries nothing known
    # Three observed reaches below (3 -> 4 -> 5) weigh three times as much as reach 1.
    upstream.update({4: [3], 5: [4]})
    basin = moi.basin_means({1: 200.0, 2: np.nan, 3: 50.0, 4: 50.0, 5: 50.0}, upstream)
    expected = 200.0**0.25 * 50.0**0.75
    assert [basin[r] for r in (1, 3, 4, 5)] == pytest.approx([expected] * 4)


def test_basin_means_split_shares_the_flow():
    # 1 splits into 2 and 3: each gets at least half. 2 (10) is below 100 / 2: the
    # reconciled pair is b1 = sqrt(100 * 2 * 10), b2 = b1 / 2; 3 (80) stays.
    upstream = {1: [], 2: [1], 3: [1]}
    basin = moi.basin_means({1: 100.0, 2: 10.0, 3: 80.0}, upstream)
    assert basin[1] == pytest.approx(np.sqrt(2000.0))
    assert basin[2] == pytest.approx(np.sqrt(2000.0) / 2)
    assert basin[3] == pytest.approx(80.0)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_basin_means_conserve_mass_on_random_trees(data):
    n = data.draw(st.integers(1, 25))
    downstream = [None] + [data.draw(st.integers(0, i - 1)) for i in range(1, n)]
    upstream = {i: [j for j in range(n) if downstream[j] == i] for i in range(n)}
    means = {i: data.draw(st.one_of(st.just(np.nan), st.floats(0.1, 1e4))) for i in range(n)}
    basin = moi.basin_means(means, upstream)
    for d, ups in upstream.items():
        inflow = [basin[u] for u in ups if np.isfinite(basin[u])]
        if inflow:
            assert basin[d] >= sum(inflow) * (1 - 1e-12)
    for i, m in means.items():
        if np.isfinite(m):
            assert np.isfinite(basin[i])


@pytest.mark.parametrize("law", sorted(LAW_PARAMS))
@pytest.mark.parametrize("factor", [0.4, 2.5])
def test_refit_reaches_the_target_within_bounds(law, factor):
    obs = make_obs(seed=3)
    params = LAW_PARAMS[law]
    q0 = flowlaws.discharge(law, params, obs.width, obs.slope, obs.dA, obs.wse)
    target = factor * q0.mean()
    refit, ok = moi.refit_parameters(law, params, obs, obs.valid, target)
    q = flowlaws.discharge(law, refit, obs.width, obs.slope, obs.dA, obs.wse)
    assert ok
    assert q.mean() == pytest.approx(target, rel=moi.REFIT_TOLERANCE)
    bounds = moi.parameter_bounds(law, params, {"width": obs.width, "dA": obs.dA, "wse": obs.wse})
    for name, value in refit.items():
        lo, hi = bounds[name]
        assert lo <= value <= hi, (name, value, lo, hi)
    if "n" in refit:
        assert refit["n"] >= moi.MIN_N
    if "A0" in refit:
        assert refit["A0"] > -obs.dA.min()
    if law == "momma":
        assert refit["B"] < obs.wse.min()


def test_refit_out_of_reach_keeps_hard_bounds():
    obs = make_obs(seed=4)
    refit, ok = moi.refit_parameters("manning", LAW_PARAMS["manning"], obs, obs.valid, 1e9)
    assert not ok
    assert refit["n"] >= moi.MIN_N and refit["A0"] > -obs.dA.min()
    refit, ok = moi.refit_parameters("hivdi", LAW_PARAMS["hivdi"], obs, obs.valid, 1e9)
    assert not ok
    depth = (refit["A0"] + obs.dA) / obs.width
    assert np.all(1 / (refit["alpha"] * depth ** refit["beta"]) >= moi.MIN_N * (1 - 1e-6))


def test_integrate_basin_matches_basin_means():
    # Two tributaries (1, 2) join into 3; two algorithms with different biases.
    obs = {r: make_obs(seed=r, reach_id=r, width=80 + 40 * r) for r in (1, 2, 3)}
    results = {r: {} for r in obs}
    for r, o in obs.items():
        results[r]["geobam"] = flpe_result(o, "manning", {"n": 0.03, "A0": 200.0 * r}, "geobam")
        results[r]["momma"] = flpe_result(o, "momma", {"B": 12.0, "Hb": 21.0}, "momma")
    results[3]["momma"].q[[0, 5]] = np.nan  # invalid observations stay invalid
    upstream = {1: [], 2: [], 3: [1, 2]}
    out = moi.integrate_basin(results, obs, upstream)
    for algorithm in ("geobam", "momma"):
        means = {r: np.nanmean(results[r][algorithm].q) for r in obs}
        expected = moi.basin_means(means, upstream)
        assert expected[3] >= expected[1] + expected[2] - 1e-9
        for r in obs:
            res = out[r][algorithm]
            assert res.refit_ok
            assert res.qbar_reach == pytest.approx(means[r])
            assert res.qbar_basin == pytest.approx(expected[r])
            assert np.nanmean(res.q) == pytest.approx(expected[r], rel=moi.REFIT_TOLERANCE)
            assert np.array_equal(np.isnan(res.q), np.isnan(results[r][algorithm].q))
            assert np.allclose(res.q_u, 0.3 * res.q, equal_nan=True)
    assert set(out[3]["geobam"].params) == {"n", "A0"}


# --------------------------------------------------------------------------------------------
# Offline


def test_manning_uncertainty_by_hand():
    # 2*6/(3*100) = 0.04, 2e-5/(2*1e-4) = 0.1, 5*45/(3*300) = 0.25
    obs = Observations(
        reach_id=1,
        time=np.array([0.0]),
        width=np.array([100.0]),
        wse=np.array([10.0]),
        slope=np.array([1e-4]),
        dA=np.array([100.0]),
        width_u=np.array([6.0]),
        wse_u=np.array([0.1]),
        slope_u=np.array([2e-5]),
        dA_u=np.array([45.0]),
        valid=np.array([True]),
    )
    params = {"n": 0.03, "A0": 200.0}
    q, q_u = offline.offline_discharge("manning", params, obs)
    expected_q = (1 / 0.03) * 300 ** (5 / 3) * 100 ** (-2 / 3) * 1e-4**0.5
    u_rel_sq = 0.04**2 + 0.1**2 + 0.25**2
    assert q[0] == pytest.approx(expected_q)
    assert q_u[0] == pytest.approx(expected_q * math.sqrt(u_rel_sq + 0.4**2))
    assert math.sqrt(u_rel_sq + 0.16) == pytest.approx(0.483838, abs=1e-6)


@pytest.mark.parametrize("law", ["hivdi", "metroman", "momma", "manning"])
def test_relative_uncertainty_matches_finite_differences(law):
    obs = make_obs(seed=7, nt=6)
    params = LAW_PARAMS[law]
    values = {"width": obs.width, "slope": obs.slope, "dA": obs.dA, "wse": obs.wse}
    sigmas = {"width": obs.width_u, "slope": obs.slope_u, "dA": obs.dA_u, "wse": obs.wse_u}
    used = {"momma": ("width", "slope", "wse")}.get(law, ("width", "slope", "dA"))
    total = np.zeros(6)
    for name in used:
        step = 1e-6 * np.abs(values[name]) + 1e-9
        up = dict(values, **{name: values[name] + step})
        down = dict(values, **{name: values[name] - step})
        dlnq = (
            np.log(flowlaws.discharge(law, params, **up))
            - np.log(flowlaws.discharge(law, params, **down))
        ) / (2 * step)
        total += (dlnq * sigmas[name]) ** 2
    analytic = offline.observation_relative_uncertainty(
        law,
        params,
        width=obs.width,
        width_u=obs.width_u,
        slope=obs.slope,
        slope_u=obs.slope_u,
        dA=obs.dA,
        dA_u=obs.dA_u,
        wse=obs.wse,
        wse_u=obs.wse_u,
    )
    assert np.allclose(analytic, np.sqrt(total), rtol=1e-4)


def test_offline_respects_the_mask():
    obs = make_obs(seed=1, nt=5)
    mask = np.array([True, False, True, True, False])
    q, q_u = offline.offline_discharge("manning", {"n": 0.03, "A0": 300.0}, obs, mask)
    assert np.isnan(q[~mask]).all() and np.isfinite(q[mask]).all()
    assert np.all(q_u[mask] >= 0.4 * q[mask])


def test_consensus_median_by_hand():
    series = [
        np.array([1.0, 2.0, np.nan]),
        np.array([3.0, np.nan, np.nan]),
        np.array([5.0, 4, np.nan]),
    ]
    result = offline.consensus(series)
    assert result[:2].tolist() == [3.0, 3.0]  # median of 1,3,5; of 2,4
    assert np.isnan(result[2])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1e5), min_size=3, max_size=3), min_size=1, max_size=6))
def test_consensus_lies_between_the_algorithms(rows):
    stack = np.array(rows)
    result = offline.consensus(list(stack))
    assert np.all(result >= stack.min(axis=0)) and np.all(result <= stack.max(axis=0))


# --------------------------------------------------------------------------------------------
# Validation


def test_metrics_by_hand():
    gauge = [1.0, 2.0, 3.0, 4.0]
    sim = [2.0, 2.0, 2.0, 6.0]
    # errors 1, 0, -1, 2: sum of squares 6 (the square of the sum would be 4)
    m = validation.metrics(sim, gauge)
    assert m["n"] == 4
    assert m["rmse"] == pytest.approx(math.sqrt(6 / 4))
    assert m["rmse"] != pytest.approx(math.sqrt(4 / 4))
    assert m["nse"] == pytest.approx(1 - 6 / 5)  # sum((G - 2.5)^2) = 5
    assert m["nrmse"] == pytest.approx(math.sqrt(1.5) / 2.5)
    assert m["nbias"] == pytest.approx(0.5 / 2.5)
    r = 1.5 / (math.sqrt(3) * math.sqrt(5 / 4))  # cov 1.5, sd S sqrt(3), sd G sqrt(5/4)
    assert m["r"] == pytest.approx(r)
    assert m["r2"] == pytest.approx(0.6)
    kge = 1 - math.sqrt((r - 1) ** 2 + (math.sqrt(3) / math.sqrt(1.25) - 1) ** 2 + 0.2**2)
    assert m["kge"] == pytest.approx(kge)
    assert m["kge"] == pytest.approx(0.373566, abs=1e-6)


def test_metrics_perfect_and_empty():
    g = [3.0, 1.0, 4.0, 1.0, 5.0]
    m = validation.metrics(g, g)
    got = [m[k] for k in ("nse", "kge", "rmse", "r", "nbias")]
    assert got == pytest.approx([1.0, 1.0, 0.0, 1.0, 0.0], abs=1e-12)
    empty = validation.metrics([], [])
    assert empty["n"] == 0 and all(np.isnan(empty[k]) for k in validation.METRICS if k != "n")
    constant = validation.metrics([1.0, 2.0], [2.0, 2.0])
    assert np.isnan(constant["nse"]) and constant["rmse"] == pytest.approx(math.sqrt(0.5))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 1e4), st.floats(0.1, 1e4)), min_size=2, max_size=30))
def test_rmse_bounds_bias_and_nse_at_most_one(pairs):
    sim, gauge = np.array(pairs).T
    m = validation.metrics(sim, gauge)
    assert m["rmse"] >= abs(np.mean(sim - gauge)) * (1 - 1e-9)
    if np.isfinite(m["nse"]):
        assert m["nse"] <= 1 + 1e-12


def test_match_gauge_pairs_same_dates():
    sim_time = np.array([10.5, 11.2, 13.9, 12.1]) * DAY
    sim_q = np.array([1.0, 2.0, 3.0, np.nan])
    gauge_time = np.array([10, 11, 12, 13]) * DAY
    gauge_q = np.array([10.0, 20.0, 30.0, np.nan])
    t, s, g = validation.match_gauge(sim_time, sim_q, gauge_time, gauge_q)
    assert s.tolist() == [1.0, 2.0] and g.tolist() == [10.0, 20.0]
    assert t.tolist() == (np.array([10.5, 11.2]) * DAY).tolist()
    t, s, g = validation.match_gauge(sim_time, sim_q, [], [])
    assert s.size == g.size == 0


def test_plot_hydrograph_writes_a_png(tmp_path):
    time = np.arange(5) * 10 * DAY
    path = validation.plot_hydrograph(
        tmp_path / "fig.png",
        {"flpe": (time, np.array([1.0, 2, np.nan, 4, 5]))},
        (np.arange(50) * DAY, np.linspace(1, 5, 50)),
        "reach 1",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
