"""The six FLPE algorithms, compact reference versions: geoBAM, SAD, SIC4DVar, HiVDI, MOMMA
(one reach each) and MetroMan (an inversion set of reaches, in flpe_metroman).

Each takes science.types.Observations (invalid observations ignored) and a ReachPrior and
returns a FlpeResult whose Q is flowlaws.discharge of the estimated parameters, NaN where an
observation is invalid, and whose q_u is the spread of Q under the estimate's uncertainty.
Each raises contract.ItemError naming the reach when it cannot run. Randomness comes only
from ``rng`` (default: seeded from the reach ID), so results are reproducible.

How each one pins down the unobservable baseline area (see flpe_common for why priors are
needed at all):

- geoBAM: Bayesian posterior of (n, A0) on an adaptive grid; at-a-station hydraulic geometry
  W = Wc (Q/Qc)^b (AMHG at one station, exponent from the SoS channel shape) must hold,
  which only the right A0 achieves.
- SAD: ensemble smoother on (n, A0) assimilating the bathymetry that the stages imply
  through a power-law section, plus the mean-flow prior.
- SIC4DVar: variational (least squares) on (n, A0) with the bathymetry extrapolated from the
  width-stage record ("simplified irregular channel"), the mean flow and the SoS Q range.
- HiVDI: hierarchical: a low-Froude first guess, then a variational fit of (A0, alpha, beta).
- MOMMA: bed stage from the width-stage record, bankfull stage from the bankfull width.
"""

from __future__ import annotations

import numpy as np

from confluence.contract import ItemError
from confluence.science import flowlaws
from confluence.science.flpe_common import (
    BED_DEPTHS,
    LOG_Q_MODEL_SD,
    METROMAN_MIN_VALID,
    MIN_VALID,
    SECTION_MODEL_SD,
    ReachData,
    area_prior,
    least_squares,
    log_mean_exp,
    make_result,
    prepare,
    reach_rng,
    section_profile,
)
from confluence.science.flpe_metroman import metroman
from confluence.science.types import FlpeResult, Observations, ReachPrior

__all__ = [
    "METROMAN_MIN_VALID",
    "MIN_VALID",
    "REACH_ALGORITHMS",
    "geobam",
    "hivdi",
    "metroman",
    "momma",
    "reach_rng",
    "sad",
    "sic4dvar",
]

#: HiVDI's prior on the exponent beta of 1/n = alpha (A/W)^beta (0 = Manning).
HIVDI_BETA_PRIOR = (0.0, 0.3)
#: MOMMA: log-sd of the bankfull depth derived from the bankfull width prior.
MOMMA_BANKFULL_LOG_SD = 0.25


def _q_spread(log_q: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and sd of Q over weighted samples (rows) of log Q."""
    q = np.exp(log_q)
    mean = weight @ q
    return mean, np.sqrt(np.maximum(weight @ (q - mean) ** 2, 0.0))


def _manning_log_q(data: ReachData, log_n: np.ndarray, log_abar: np.ndarray) -> np.ndarray:
    """log Manning Q over samples (k,) x observations (nt,); NaN where an area is not positive."""
    area = np.exp(log_abar)[:, None] + data.deviation[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        log_area = np.log(area)
    return -log_n[:, None] + 5 / 3 * log_area + data.manning_core[None, :]


def _mean_flow_misfit(log_q: np.ndarray, prior: ReachPrior) -> np.ndarray:
    """(log mean Q - log mean_q) / logQ_sd per sample: the SoS mean flow as a prior on the
    record's mean, not on every Q (which would flatten the hydrograph)."""
    return (log_mean_exp(log_q) - np.log(prior.mean_q)) / prior.logQ_sd


# --------------------------------------------------------------------------------------------
# geoBAM


def _grid(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return a.ravel(), b.ravel(), (hi - lo) / (n - 1)


def geobam(obs: Observations, prior: ReachPrior, rng=None, grid_size: int = 41) -> FlpeResult:
    """Bayesian estimate of Manning's (n, A0) with SoS priors and AMHG.

    Posterior: log n ~ N(logn_hat, logn_sd); log Abar ~ the SoS area prior; the record mean
    of Q ~ logN(mean_q, logQ_sd); and hydraulic geometry W = Wc (Q/Qc)^b. Q contains
    W^(-2/3) and the noisiest SWOT observable, S, so AMHG is used in the equivalent form that
    Manning gives at a steady slope, log W = c + b' log A with b' = 5b/(3 + 2b): the width
    errors (15 % for SWOT) then stay in the dependent variable instead of attenuating the
    exponent. Its residuals (sd from the width errors) are the AMHG likelihood, and
    b' ~ N(1/(r + 1), ...) from the SoS channel shape r (a section W ~ Y^(1/r) has
    A ~ Y^(1 + 1/r)). AMHG depends on A0 only (n does not enter it), so it is what identifies
    A0; the priors set the scale.

    The posterior is two-dimensional and smooth, so it is integrated on a grid (prior box of
    +-4 sd, then a zoom on the posterior mass): exact up to the grid, with no sampling noise
    and no tuning (``rng`` is accepted for a uniform interface). Parameters are posterior
    means; q_u is the posterior sd of Q.
    """
    data = prepare(obs, prior, "geobam")
    mu_a, sd_a = area_prior(data, prior)
    floor = data.log_abar_floor()
    log_w = np.log(data.width)
    wc = log_w - log_w.mean()
    shape_r = np.exp(prior.logr_hat)
    expo_mean = 1 / (shape_r + 1)
    expo_sd = shape_r / (shape_r + 1) ** 2 * prior.logr_sd
    # Residual variance of log W about the AMHG line: the width error plus a model error.
    amhg_var = float(np.median(data.width_rel_u**2)) + LOG_Q_MODEL_SD**2

    def log_posterior(log_n, log_abar):
        log_q = _manning_log_q(data, log_n, log_abar)
        lp = (
            -0.5 * ((log_n - prior.logn_hat) / prior.logn_sd) ** 2
            - 0.5 * ((log_abar - mu_a) / sd_a) ** 2
            - 0.5 * _mean_flow_misfit(log_q, prior) ** 2
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log(np.exp(log_abar)[:, None] + data.deviation)
        xc = x - x.mean(axis=1, keepdims=True)
        sxx = np.einsum("ij,ij->i", xc, xc)
        sxy = xc @ wc
        expo = sxy / sxx
        ssr = wc @ wc - expo * sxy
        lp = lp - 0.5 * ssr / amhg_var - 0.5 * ((expo - expo_mean) / expo_sd) ** 2
        return np.where(np.isfinite(lp), lp, -np.inf), log_q

    lo = np.array([prior.logn_hat - 4 * prior.logn_sd, max(mu_a - 5 * sd_a, floor)])
    hi = np.array([prior.logn_hat + 4 * prior.logn_sd, max(mu_a + 5 * sd_a, floor + 10 * sd_a)])
    for _ in range(2):
        log_n, log_abar, step = _grid(lo, hi, grid_size)
        lp, log_q = log_posterior(log_n, log_abar)
        if not np.isfinite(lp.max()):
            raise _no_posterior(data, "geobam")
        weight = np.exp(lp - lp.max())
        weight /= weight.sum()
        points = np.column_stack([log_n, log_abar])
        mean = weight @ points
        sd = np.sqrt(weight @ (points - mean) ** 2)
        half = np.maximum(4.5 * sd, 2 * step)
        lo, hi = mean - half, mean + half
        lo[1] = max(lo[1], floor)
    n_hat = float(weight @ np.exp(log_n))
    abar_hat = float(weight @ np.exp(log_abar))
    _, q_u = _q_spread(log_q, weight)
    params = {"n": n_hat, "A0": abar_hat - float(data.dA.mean())}
    return make_result(obs, "geobam", "manning", params, q_u)


def _no_posterior(data: ReachData, algorithm: str) -> ItemError:
    return ItemError(
        f"reach {data.reach_id}: {algorithm} found no parameters consistent with the "
        "observations and priors (every candidate gives a non-positive area)"
    )


# --------------------------------------------------------------------------------------------
# SAD


def _standardised(rng, shape) -> np.ndarray:
    """Normal draws with each column's sample mean 0 and sd 1 exactly (fewer members needed
    for the same sampling error of the ensemble mean)."""
    draws = rng.standard_normal(shape)
    draws -= draws.mean(axis=0)
    return draws / draws.std(axis=0)


def _es_mda(state, predict, observed, obs_sd, rng, iterations: int) -> np.ndarray:
    """Ensemble smoother with multiple data assimilation (Emerick & Reynolds 2013): the
    Kalman update repeated ``iterations`` times with the observation errors inflated by that
    factor (and perturbed observations), which handles mildly nonlinear operators."""
    members = state.shape[0]
    for _ in range(iterations):
        predicted = predict(state)
        noise = _standardised(rng, predicted.shape)
        perturbed = observed + np.sqrt(iterations) * obs_sd * noise
        dx = state - state.mean(axis=0)
        dy = predicted - predicted.mean(axis=0)
        c_yy = dy.T @ dy / (members - 1) + iterations * np.diag(obs_sd**2)
        c_xy = dx.T @ dy / (members - 1)
        state = state + np.linalg.solve(c_yy, (perturbed - predicted).T).T @ c_xy.T
    return state


def stage_bathymetry(data: ReachData, prior: ReachPrior) -> tuple[float, float] | None:
    """log Abar (mean, sd) of the power-law section that fits the stages, or None.

    In a section W ~ Y^(1/r) the flow area is A = c W Y with c = r/(1 + r) and the depth
    Y = H - B, so with h = H - mean(H) and b = B - mean(H): dA_t = c W_t h_t - c b W_t - A0,
    linear in (c, c b, A0). Least squares over the record, with the SoS shape prior
    (logr_hat, logr_sd) as one more row on c; the misfit scale comes from the residuals
    (model and data error together), floored so that exact data stay finite.
    """
    if data.n < 4 or np.ptp(data.wse) <= 0:
        return None
    h = data.wse - data.wse.mean()
    design = np.column_stack([data.width * h, -data.width, -np.ones(data.n)])
    coef, *_ = np.linalg.lstsq(design, data.dA, rcond=None)
    residual = data.dA - design @ coef
    floor = 1e-3 * float(np.mean(np.abs(data.dA)) + np.ptp(data.dA) + 1e-9)
    sigma = max(float(np.sqrt(residual @ residual / max(data.n - 3, 1))), floor)
    shape_r = np.exp(prior.logr_hat)
    c_mean, c_sd = shape_r / (1 + shape_r), shape_r / (1 + shape_r) ** 2 * prior.logr_sd
    rows = np.vstack([design / sigma, [1 / c_sd, 0.0, 0.0]])
    rhs = np.concatenate([data.dA / sigma, [c_mean / c_sd]])
    coef, *_ = np.linalg.lstsq(rows, rhs, rcond=None)
    covariance = np.linalg.pinv(rows.T @ rows)
    abar = coef[2] + data.dA.mean()
    if not (coef[0] > 0 and abar > data.spread and np.isfinite(covariance[2, 2])):
        return None
    sd = np.sqrt(covariance[2, 2]) / abar
    return float(np.log(abar)), float(np.hypot(sd, SECTION_MODEL_SD))


def sad(
    obs: Observations,
    prior: ReachPrior,
    rng=None,
    members: int = 200,
    iterations: int = 4,
) -> FlpeResult:
    """Ensemble-smoother estimate of Manning's (n, A0), after SAD's assimilation of WSE.

    SAD assimilates water-surface elevations into a gradually-varied-flow model whose
    bathymetry and roughness are the unknowns, starting from an ensemble drawn from the
    priors. At reach scale, with one reach-averaged observation per time, the steady GVF
    profile reduces to normal flow (friction slope = observed slope), i.e. Manning, and the
    bathymetry to a power-law section whose fit to the stages (stage_bathymetry) observes
    the mean-state area. The ensemble (log n, log Abar), drawn from the SoS priors, is
    updated by ES-MDA (the ensemble Kalman smoother iterated with inflated observation
    errors, Emerick & Reynolds 2013) against that area and the SoS mean flow; the update needs
    no adjoint and copes with the nonlinear mean-flow operator. Parameters are the ensemble
    means (in log space); q_u is the ensemble sd of Q.
    """
    data = prepare(obs, prior, "sad")
    rng = reach_rng(data.reach_id) if rng is None else rng
    mu_a, sd_a = area_prior(data, prior)
    floor = data.log_abar_floor()
    draws = _standardised(rng, (members, 2))
    state = np.column_stack(
        [prior.logn_hat + prior.logn_sd * draws[:, 0], np.maximum(mu_a + sd_a * draws[:, 1], floor)]
    )
    bathymetry = stage_bathymetry(data, prior)

    def log_q_of(x):
        log_abar = np.maximum(x[:, 1], floor + 1e-6)
        return _manning_log_q(data, x[:, 0], log_abar)

    def predict(x):
        columns = [log_mean_exp(log_q_of(x))]
        if bathymetry is not None:
            columns.append(x[:, 1])
        return np.column_stack(columns)

    observed = [np.log(prior.mean_q)]
    obs_sd = [prior.logQ_sd]
    if bathymetry is not None:
        observed.append(bathymetry[0])
        obs_sd.append(bathymetry[1])
    state = _es_mda(state, predict, np.array(observed), np.array(obs_sd), rng, iterations)
    state[:, 1] = np.maximum(state[:, 1], floor + 1e-6)
    log_q = log_q_of(state)
    if not np.all(np.isfinite(log_q)):
        raise ItemError(f"reach {data.reach_id}: sad ensemble diverged (non-finite discharge)")
    _, q_u = _q_spread(log_q, np.full(members, 1.0 / members))
    log_n, log_abar = state.mean(axis=0)
    params = {"n": float(np.exp(log_n)), "A0": float(np.exp(log_abar) - data.dA.mean())}
    return make_result(obs, "sad", "manning", params, q_u)


# --------------------------------------------------------------------------------------------
# SIC4DVar and HiVDI (variational)


def _section_term(data: ReachData):
    profile = section_profile(data.wse, data.width)
    return None if profile is None else profile.implied_log_abar()


def _propagate(q: np.ndarray, gradient: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """q_u from the linearised log Q: gradient (nt, p) of log Q, parameter covariance (p, p)."""
    var = np.einsum("tp,pq,tq->t", gradient, covariance, gradient)
    return q * np.sqrt(np.maximum(var, 0.0))


def _converged_or_fail(fit, data: ReachData, algorithm: str):
    if not fit.converged or not np.isfinite(fit.cost):
        raise ItemError(
            f"reach {data.reach_id}: {algorithm} did not converge (cost {fit.cost:.3g} at "
            f"{np.array2string(fit.x, precision=4)})"
        )


def sic4dvar(obs: Observations, prior: ReachPrior, rng=None) -> FlpeResult:
    """Variational estimate of Manning's (n, A0).

    Cost (least squares of normalised misfits): background terms on log n and log Abar from
    the SoS; the bathymetry term, Abar implied by the "simplified irregular channel": a
    power-law section W = a (H - B)^p fitted to the observed width-stage pairs and
    extrapolated below the lowest observation down to zero width (its uncertainty is the
    profile likelihood over the bed B); the mean-flow consistency of Q(t) with the SoS
    mean_q; and, per time, a penalty on Q(t) leaving the SoS [min_q, max_q] range. Minimised
    by bounded Levenberg-Marquardt; q_u from the Gauss-Newton covariance. ``rng`` unused.
    """
    data = prepare(obs, prior, "sic4dvar")
    mu_a, sd_a = area_prior(data, prior)
    section = _section_term(data)
    bounded = np.isfinite([prior.min_q, prior.max_q]).all() and 0 < prior.min_q < prior.max_q
    range_scale = prior.logQ_sd * np.sqrt(data.n)

    def residuals(x):
        log_n, log_abar = x[:, 0], x[:, 1]
        log_q = _manning_log_q(data, log_n, log_abar)
        parts = [
            (log_n - prior.logn_hat) / prior.logn_sd,
            (log_abar - mu_a) / sd_a,
            _mean_flow_misfit(log_q, prior),
        ]
        if section is not None:
            parts.append((log_abar - section[0]) / section[1])
        columns = [np.column_stack(parts)]
        if bounded:
            above = np.maximum(log_q - np.log(prior.max_q), 0.0)
            below = np.maximum(np.log(prior.min_q) - log_q, 0.0)
            columns += [above / range_scale, below / range_scale]
        out = np.concatenate(columns, axis=1)
        return np.where(np.isfinite(out), out, 1e6)

    floor = data.log_abar_floor()
    start = max(section[0] if section is not None else mu_a, floor + 1e-6)
    fit = least_squares(
        residuals,
        [prior.logn_hat, start],
        [prior.logn_hat - 8 * prior.logn_sd, floor],
        [prior.logn_hat + 8 * prior.logn_sd, max(mu_a, start) + 10 * sd_a],
    )
    _converged_or_fail(fit, data, "sic4dvar")
    log_n, log_abar = fit.x
    abar = np.exp(log_abar)
    area = abar + data.deviation
    q = np.exp(_manning_log_q(data, np.array([log_n]), np.array([log_abar]))[0])
    gradient = np.column_stack([-np.ones(data.n), 5 / 3 * abar / area])
    q_u = _propagate(q, gradient, fit.covariance())
    params = {"n": float(np.exp(log_n)), "A0": float(abar - data.dA.mean())}
    return make_result(obs, "sic4dvar", "manning", params, q_u)


def low_froude_abar(data: ReachData, prior: ReachPrior) -> float:
    """Abar at which Manning with the prior n carries the prior mean flow (HiVDI's first
    guess: the low-Froude, normal-flow limit of the Saint-Venant model)."""
    floor = data.log_abar_floor()
    candidates = np.linspace(floor, floor + 25.0, 501)
    log_q = _manning_log_q(data, np.full(candidates.size, prior.logn_hat), candidates)
    misfit = log_mean_exp(log_q) - np.log(prior.mean_q)  # increasing in Abar
    above = np.flatnonzero(misfit >= 0)
    if above.size == 0:
        return float(np.exp(candidates[-1]))
    k = int(above[0])
    if k == 0:
        return float(np.exp(candidates[0] + 1e-3))
    t = misfit[k - 1] / (misfit[k - 1] - misfit[k])
    return float(np.exp(candidates[k - 1] + t * (candidates[k] - candidates[k - 1])))


def hivdi(obs: Observations, prior: ReachPrior, rng=None) -> FlpeResult:
    """Hierarchical variational estimate of (A0, alpha, beta) in 1/n = alpha (A/W)^beta.

    Level 1 (low-Froude): Abar such that Manning with the prior n carries the SoS mean flow;
    it fixes the reference depth h_ref = Abar/mean(W) and the starting point. Level 2: bounded
    Levenberg-Marquardt on (log Abar, log K, beta), K = alpha h_ref^beta being the Strickler
    coefficient 1/n at the reference depth, with background terms (SoS area prior, K from
    logn_hat, beta from HIVDI_BETA_PRIOR), the bathymetry implied by the width-stage record
    (as in SIC4DVar) and the mean-flow consistency. q_u from the Gauss-Newton covariance.
    ``rng`` unused.
    """
    data = prepare(obs, prior, "hivdi")
    mu_a, sd_a = area_prior(data, prior)
    section = _section_term(data)
    abar_first = low_froude_abar(data, prior)
    log_h_ref = float(np.log(abar_first / np.mean(data.width)))
    log_width = np.log(data.width)
    beta_mean, beta_sd = HIVDI_BETA_PRIOR

    def log_discharge(x):
        log_abar, log_k, beta = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        area = np.exp(log_abar) + data.deviation[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            log_area = np.log(area)
        log_depth = log_area - log_width[None, :]
        return log_k + beta * (log_depth - log_h_ref) + 5 / 3 * log_area + data.manning_core

    def residuals(x):
        log_q = log_discharge(x)
        parts = [
            (x[:, 0] - mu_a) / sd_a,
            (x[:, 1] + prior.logn_hat) / prior.logn_sd,
            (x[:, 2] - beta_mean) / beta_sd,
            _mean_flow_misfit(log_q, prior),
        ]
        if section is not None:
            parts.append((x[:, 0] - section[0]) / section[1])
        out = np.column_stack(parts)
        return np.where(np.isfinite(out), out, 1e6)

    floor = data.log_abar_floor()
    start = [max(np.log(abar_first), floor + 1e-6), -prior.logn_hat, beta_mean]
    fit = least_squares(
        residuals,
        start,
        [floor, -prior.logn_hat - 8 * prior.logn_sd, beta_mean - 6 * beta_sd],
        [
            max(mu_a, start[0]) + 10 * sd_a,
            -prior.logn_hat + 8 * prior.logn_sd,
            beta_mean + 6 * beta_sd,
        ],
    )
    _converged_or_fail(fit, data, "hivdi")
    log_abar, log_k, beta = fit.x
    abar = float(np.exp(log_abar))
    area = abar + data.deviation
    q = np.exp(log_discharge(fit.x[None, :])[0])
    gradient = np.column_stack(
        [
            (beta + 5 / 3) * abar / area,
            np.ones(data.n),
            np.log(area / data.width) - log_h_ref,
        ]
    )
    q_u = _propagate(q, gradient, fit.covariance())
    params = {
        "A0": abar - float(data.dA.mean()),
        "alpha": float(np.exp(log_k - beta * log_h_ref)),
        "beta": float(beta),
    }
    return make_result(obs, "hivdi", "hivdi", params, q_u)


# --------------------------------------------------------------------------------------------
# MOMMA


def momma(obs: Observations, prior: ReachPrior, rng=None) -> FlpeResult:
    """MOMMA's zero-flow stage B and bankfull stage Hb from the stage record and priors.

    B: the width-stage record extrapolated to zero width through a power-law section
    W = a (H - B)^p (profile likelihood over B). Hb: the stage at which that section reaches
    the SoS bankfull width exp(logWb_hat) (the highest observed stage when there is none),
    with a log-sd of MOMMA_BANKFULL_LOG_SD on the bankfull depth. These combine with the SoS
    bankfull depth (logDb_hat, for MOMMA's depth (Hb - B) r/(1 + r)) and the mean-flow prior
    over a grid of (B, Hb); parameters are posterior means and q_u the posterior sd of Q.
    Without dA, MOMMA needs no A0. ``rng`` unused.
    """
    data = prepare(obs, prior, "momma")
    wse, width, slope = data.wse, data.width, data.slope
    profile = section_profile(wse, width)
    if profile is not None:
        keep = np.argsort(profile.weight)[::-1][:48]
        bed, log_weight = profile.bed[keep], np.log(profile.weight[keep])
        expo, log_coef = profile.expo[keep], profile.log_coef[keep]
    else:
        bed = wse.min() - BED_DEPTHS
        log_weight = np.log(np.gradient(np.log(BED_DEPTHS)))
        expo = log_coef = None
    lowest, highest = wse.min() - bed, wse.max() - bed
    if np.isfinite(prior.logWb_hat) and expo is not None:
        bankfull_depth = np.exp((prior.logWb_hat - log_coef) / expo)
    else:
        bankfull_depth = highest
    bankfull_depth = np.clip(bankfull_depth, 1.05 * lowest, 5 * highest)
    offsets = np.linspace(-2.5, 2.5, 11)
    bed_g = np.repeat(bed, offsets.size)
    hb_g = bed_g + np.outer(bankfull_depth, np.exp(MOMMA_BANKFULL_LOG_SD * offsets)).ravel()
    lp = np.repeat(log_weight, offsets.size) - 0.5 * np.tile(offsets, bed.size) ** 2
    if np.isfinite(prior.logDb_hat):
        # MOMMA's depth at bankfull stage is the SoS bankfull depth.
        ratio = flowlaws.MOMMA_R / (1 + flowlaws.MOMMA_R)
        bankfull = (hb_g - bed_g) * ratio
        lp = lp - 0.5 * ((np.log(bankfull) - prior.logDb_hat) / prior.logDb_sd) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        q = flowlaws.momma(bed_g[:, None], hb_g[:, None], width, slope, wse)
        log_q = np.log(q)
    lp = lp - 0.5 * _mean_flow_misfit(log_q, prior) ** 2
    lp = np.where(np.isfinite(lp) & np.all(np.isfinite(log_q), axis=1), lp, -np.inf)
    if not np.isfinite(lp.max()):
        raise _no_posterior(data, "momma")
    weight = np.exp(lp - lp.max())
    weight /= weight.sum()
    _, q_u = _q_spread(np.where(np.isfinite(log_q), log_q, 0.0), weight)
    params = {"B": float(weight @ bed_g), "Hb": float(weight @ hb_g)}
    return make_result(obs, "momma", "momma", params, q_u)


#: Single-reach algorithms by name (MetroMan works on sets).
REACH_ALGORITHMS = {
    "geobam": geobam,
    "hivdi": hivdi,
    "momma": momma,
    "sad": sad,
    "sic4dvar": sic4dvar,
}
