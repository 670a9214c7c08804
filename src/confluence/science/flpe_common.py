"""Shared ground of the FLPE algorithms: input checks, SoS priors, section geometry, a small
bounded least-squares solver and the result builder.

Why the algorithms need priors at all: from one reach's SWOT record (W, H, S, dA) a
Manning-type law fixes the *shape* of the hydrograph only up to the unknown baseline area A0,
and its *scale* not at all, since (n, A0) -> (c n, A0) divides every Q by c. Each algorithm
takes the scale from the SoS priors (mean flow, Manning's n, geometry) and A0 from its own
piece of hydraulic reasoning (see each algorithm's docstring).

Areas: A = A0 + dA, so A0 is the area where dA = 0. Internally the algorithms estimate the
area of the mean observed state, Abar = A0 + mean(dA), which is better conditioned than A0
(it does not depend on SWOT's choice of dA reference); Abar must exceed mean(dA) - min(dA) so
that every observed area is positive.

SoS geometry priors: logWb_hat and logDb_hat are the bankfull width and hydraulic depth, as
in the SoS gbpriors; area_prior scales them to the observed mean state through the channel
shape r (logr_hat).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from confluence.contract import ItemError
from confluence.science import flowlaws
from confluence.science.types import FlpeResult, Observations, ReachPrior

#: Fewest valid observations a single-reach algorithm runs on.
MIN_VALID = 5
#: Fewest common observation times of a MetroMan inversion set.
METROMAN_MIN_VALID = 6

#: Relative observation uncertainties assumed where the SWOT file has none.
DEFAULT_WIDTH_REL_U = 0.05
DEFAULT_SLOPE_REL_U = 0.2
DEFAULT_DA_REL_U = 0.05
#: Model error added to every log-discharge misfit (no flow law is exact).
LOG_Q_MODEL_SD = 0.03
#: Model error of an area inferred from a fitted cross-section (sections are not power laws).
SECTION_MODEL_SD = 0.1
#: Floor of the width misfit of a section fit, so that noise-free data give a finite profile.
SECTION_FIT_FLOOR = 0.01
#: Depths of the bed below the lowest observed stage tried by the section fit (m).
BED_DEPTHS = np.geomspace(0.05, 100.0, 97)


def reach_rng(reach_ids) -> np.random.Generator:
    """The random generator of a reach (or a set of reaches), seeded from its ID(s)."""
    ids = [int(reach_ids)] if np.ndim(reach_ids) == 0 else [int(r) for r in reach_ids]
    return np.random.default_rng(ids)


@dataclass(frozen=True)
class ReachData:
    """The valid observations of one reach, with uncertainties completed by defaults."""

    reach_id: int
    width: np.ndarray
    wse: np.ndarray
    slope: np.ndarray
    dA: np.ndarray
    width_rel_u: np.ndarray
    slope_rel_u: np.ndarray
    dA_u: np.ndarray

    @property
    def n(self) -> int:
        return self.width.size

    @property
    def spread(self) -> float:
        """mean(dA) - min(dA): the mean-state area must exceed it."""
        return float(self.dA.mean() - self.dA.min())

    @property
    def deviation(self) -> np.ndarray:
        """dA - mean(dA): the observed areas are Abar + deviation."""
        return self.dA - self.dA.mean()

    @property
    def manning_core(self) -> np.ndarray:
        """log(W^(-2/3) S^(1/2)), the part of log Q that no parameter touches."""
        return -2 / 3 * np.log(self.width) + 0.5 * np.log(self.slope)

    def log_abar_floor(self) -> float:
        """Smallest admissible log Abar (every observed area stays positive)."""
        scale = max(float(np.mean(self.width)), 1.0)  # 1 m^2 per m of width as a length scale
        return float(np.log(max(self.spread * 1.001, 1e-6 * scale)))


def _relative(u, x, default: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(u) / x
    return np.where(np.isfinite(rel) & (rel > 0), rel, default)


def prepare(
    obs: Observations, prior: ReachPrior, algorithm: str, minimum: int = MIN_VALID
) -> ReachData:
    """Check the inputs of one reach and return its valid observations.

    Raises ItemError naming the reach when there are too few valid observations or the
    priors an algorithm relies on are missing or not finite.
    """
    rid = int(obs.reach_id)
    if int(prior.reach_id) != rid:
        raise ItemError(f"reach {rid}: {algorithm} was given the priors of reach {prior.reach_id}")
    if obs.n_valid < minimum:
        raise ItemError(
            f"reach {rid}: only {obs.n_valid} valid observations, {algorithm} needs at least "
            f"{minimum}"
        )
    if not (np.isfinite(prior.mean_q) and prior.mean_q > 0):
        raise ItemError(
            f"reach {rid}: SoS mean_q is {prior.mean_q}; {algorithm} needs a positive "
            "mean-flow prior (check the SoS model group)"
        )
    for name in ("logQ_sd", "logn_sd", "logWb_sd", "logDb_sd", "logr_sd"):
        value = getattr(prior, name)
        if not (np.isfinite(value) and value > 0):
            raise ItemError(f"reach {rid}: SoS prior {name} is {value}; it must be positive")
    for name in ("logn_hat", "logr_hat"):
        if not np.isfinite(getattr(prior, name)):
            raise ItemError(f"reach {rid}: SoS prior {name} is not finite")
    v = obs.valid

    def valid(name: str) -> np.ndarray:
        return np.asarray(getattr(obs, name), float)[v]

    width, slope, dA, dA_u = valid("width"), valid("slope"), valid("dA"), np.abs(valid("dA_u"))
    area_scale = np.abs(dA) + width  # an area of 1 m of depth, only for a missing dA_u
    return ReachData(
        reach_id=rid,
        width=width,
        wse=valid("wse"),
        slope=slope,
        dA=dA,
        width_rel_u=_relative(valid("width_u"), width, DEFAULT_WIDTH_REL_U),
        slope_rel_u=_relative(valid("slope_u"), slope, DEFAULT_SLOPE_REL_U),
        dA_u=np.where(np.isfinite(dA_u), dA_u, DEFAULT_DA_REL_U * area_scale),
    )


def area_prior(data: ReachData, prior: ReachPrior) -> tuple[float, float]:
    """Prior mean and sd of log Abar (area of the mean observed state) from the SoS.

    The SoS gives bankfull width Wb and (hydraulic) depth Db, and the channel shape r of a
    section W ~ Y^(1/r). Along such a section the depth scales as (W/Wb)^r, so at the
    observed mean width W: Abar = W Db (W/Wb)^r. Without Db, the depth is Manning's with the
    prior n and mean flow at the observed width and slope ("low-Froude"); without Wb, the
    depth is taken as Db.
    """
    log_w = float(np.log(np.mean(data.width)))
    r, sd_log_r = float(np.exp(prior.logr_hat)), prior.logr_sd
    if np.isfinite(prior.logDb_hat) and np.isfinite(prior.logWb_hat):
        ratio = log_w - prior.logWb_hat
        log_d = prior.logDb_hat + r * ratio
        sd_d = float(
            np.sqrt(prior.logDb_sd**2 + (r * prior.logWb_sd) ** 2 + (r * ratio * sd_log_r) ** 2)
        )
    elif np.isfinite(prior.logDb_hat):
        log_d, sd_d = prior.logDb_hat, prior.logDb_sd
    else:
        # Manning with the prior n and mean flow: Q = W D^(5/3) S^(1/2) / n.
        log_s = float(np.log(np.mean(data.slope)))
        log_d = 0.6 * (np.log(prior.mean_q) + prior.logn_hat - log_w - 0.5 * log_s)
        sd_d = 0.6 * float(np.hypot(prior.logQ_sd, prior.logn_sd))
    # The observed mean width carries the width noise of about sqrt(n) observations.
    sd_w = float(np.median(data.width_rel_u)) / np.sqrt(data.n)
    return float(log_w + log_d), float(np.hypot(sd_w, sd_d))


def log_mean_exp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(mean(exp(x))) without overflow."""
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.mean(np.exp(x - top), axis=axis)) + np.squeeze(top, axis=axis)
    return out


def log_q_sd(data: ReachData, area) -> np.ndarray:
    """sd of log Manning Q from the observation errors (as offline propagates them)."""
    return np.sqrt(
        (2 / 3 * data.width_rel_u) ** 2
        + (0.5 * data.slope_rel_u) ** 2
        + (5 / 3 * data.dA_u / area) ** 2
        + LOG_Q_MODEL_SD**2
    )


# --------------------------------------------------------------------------------------------
# Section geometry from the width-stage record


@dataclass(frozen=True)
class SectionProfile:
    """Candidate power-law sections W = a (H - B)^p with their profile-likelihood weights.

    Each candidate bed stage B (below the lowest observed stage) has the best (a, p) of a
    log-log regression of W on H - B; ``weight`` sums to one; ``log_abar`` is the log of the
    mean area the section gives over the observed stages.
    """

    bed: np.ndarray
    expo: np.ndarray
    log_coef: np.ndarray
    weight: np.ndarray
    log_abar: np.ndarray

    def implied_log_abar(self) -> tuple[float, float]:
        """Mean and sd of log Abar implied by the section, including its model error."""
        mean = float(self.weight @ self.log_abar)
        var = float(self.weight @ (self.log_abar - mean) ** 2)
        return mean, float(np.sqrt(var + SECTION_MODEL_SD**2))


def _fit_sections(wse: np.ndarray, log_w: np.ndarray, depth: np.ndarray):
    bed = wse.min() - depth
    x = np.log(wse[None, :] - bed[:, None])
    x_mean = x.mean(axis=1, keepdims=True)
    xc = x - x_mean
    wc = log_w - log_w.mean()
    sxy = xc @ wc
    expo = sxy / np.einsum("ij,ij->i", xc, xc)
    ssr = np.maximum(wc @ wc - expo * sxy, 0.0)
    log_coef = log_w.mean() - expo * x_mean[:, 0]
    return bed, expo, log_coef, ssr


def section_profile(wse: np.ndarray, width: np.ndarray) -> SectionProfile | None:
    """Fit power-law sections to the (H, W) pairs over a grid of bed stages.

    None when the record cannot inform a section (no stage or width variation, or no bed
    gives a widening section). Flat profiles (noisy data) spread the weight over many beds,
    so callers get a wide, honest uncertainty rather than a spurious bed.
    """
    log_w = np.log(width)
    if np.ptp(wse) <= 0 or np.ptp(log_w) <= 1e-9 or width.size < 4:
        return None
    bed, expo, log_coef, ssr = _fit_sections(wse, log_w, BED_DEPTHS)
    admissible = (expo > 0) & (expo <= 3)
    if not admissible.any():
        return None
    k = int(np.argmin(np.where(admissible, ssr, np.inf)))
    fine = np.geomspace(BED_DEPTHS[max(k - 1, 0)], BED_DEPTHS[min(k + 1, BED_DEPTHS.size - 1)], 33)
    depth = np.unique(np.concatenate([BED_DEPTHS, fine]))
    bed, expo, log_coef, ssr = _fit_sections(wse, log_w, depth)
    admissible = (expo > 0) & (expo <= 3)
    sigma2 = max(float(ssr[admissible].min()) / max(width.size - 3, 1), SECTION_FIT_FLOOR**2)
    # Uniform prior in log depth: weight each grid point by its share of log-depth.
    cell = np.gradient(np.log(depth))
    with np.errstate(divide="ignore"):
        log_weight = -0.5 * (ssr - ssr[admissible].min()) / sigma2 + np.log(cell)
    log_weight = np.where(admissible, log_weight, -np.inf)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    keep = weight > 1e-9
    bed, expo, log_coef, weight = (
        bed[keep],
        expo[keep],
        log_coef[keep],
        weight[keep] / weight[keep].sum(),
    )
    log_area = (
        log_coef[:, None]
        + (expo[:, None] + 1) * np.log(wse[None, :] - bed[:, None])
        - np.log(expo[:, None] + 1)
    )
    return SectionProfile(bed, expo, log_coef, weight, log_mean_exp(log_area))


# --------------------------------------------------------------------------------------------
# A small bounded Levenberg-Marquardt solver (scipy.optimize costs ~0.5 s to import, more
# than a whole FLPE item; these problems have two or three unknowns).


#: Damping factors (relative to the current one) tried together in each iteration.
DAMPING_TRIALS = np.array([1e-2, 1e-1, 1.0, 1e1, 1e2])


@dataclass(frozen=True)
class LeastSquaresFit:
    x: np.ndarray
    cost: float  # sum of squared residuals
    jacobian: np.ndarray  # (m, p) at x
    converged: bool

    def covariance(self) -> np.ndarray:
        """Gauss-Newton covariance of x when the residuals are normalised misfits."""
        jtj = self.jacobian.T @ self.jacobian
        return np.linalg.pinv(jtj)


def _jacobian(residuals, x, r, lower, upper) -> np.ndarray:
    step = 1e-6 * np.maximum(1.0, np.abs(x))
    step = np.where(x + step > upper, -step, step)
    shifted = x[None, :] + np.diag(step)
    return ((residuals(shifted) - r[None, :]) / step[:, None]).T


def least_squares(residuals, x0, lower, upper, max_iter: int = 100) -> LeastSquaresFit:
    """Minimise sum(residuals(x)^2) within [lower, upper] by Levenberg-Marquardt.

    ``residuals`` maps a batch of points (k, p) to residuals (k, m), so the finite-difference
    Jacobian costs one call, and so does trying DAMPING_TRIALS damping factors at once
    (the best is taken, which replaces the usual one-at-a-time damping adjustments).
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    x = np.clip(np.asarray(x0, float), lower, upper)
    r = residuals(x[None, :])[0]
    cost = float(r @ r)
    if not np.isfinite(cost):
        return LeastSquaresFit(x, cost, np.full((r.size, x.size), np.nan), False)
    damping = 1e-3
    converged = False
    for _ in range(max_iter):
        jac = _jacobian(residuals, x, r, lower, upper)
        gradient = jac.T @ r
        # Parameters held at a bound by the gradient stay there; the step moves the others.
        span = 1e-12 * (1 + np.abs(x))
        held = ((x <= lower + span) & (gradient > 0)) | ((x >= upper - span) & (gradient < 0))
        free = ~held
        if not free.any():
            converged = True
            break
        normal = jac[:, free].T @ jac[:, free]
        scale = np.diag(np.diag(normal) + 1e-12)
        for _ in range(4):  # widen the damping range until some step lowers the cost
            trials = damping * DAMPING_TRIALS
            steps = np.zeros((trials.size, x.size))
            for k, d in enumerate(trials):
                steps[k, free] = np.linalg.solve(normal + d * scale, -gradient[free])
            candidates = np.clip(x + steps, lower, upper)
            r_new = residuals(candidates)
            costs = np.einsum("ij,ij->i", r_new, r_new)
            costs = np.where(np.isfinite(costs), costs, np.inf)
            best = int(np.argmin(costs))
            if costs[best] <= cost:
                break
            damping *= 1e4
        else:
            converged = True  # no step lowers the cost: x is a (bounded) minimum
            break
        gain = cost - costs[best]
        moved = np.max(np.abs(candidates[best] - x) / (1 + np.abs(x)))
        x, r, cost = candidates[best], r_new[best], float(costs[best])
        damping = max(trials[best], 1e-12)
        if gain <= 1e-10 * (1 + cost) or moved <= 1e-10:
            converged = True
            break
    return LeastSquaresFit(x, cost, _jacobian(residuals, x, r, lower, upper), converged)


# --------------------------------------------------------------------------------------------
# Results


def make_result(
    obs: Observations,
    algorithm: str,
    flow_law: str,
    params: dict[str, float],
    q_u_valid: np.ndarray,
) -> FlpeResult:
    """Q over all observations from the flow law and ``params`` (NaN where invalid).

    Q comes from flowlaws.discharge, so MOI and offline recompute exactly this Q.
    """
    rid = int(obs.reach_id)
    params = {name: float(params[name]) for name in flowlaws.PARAMETERS[flow_law]}
    if not all(np.isfinite(list(params.values()))):
        raise ItemError(f"reach {rid}: {algorithm} did not converge (parameters {params})")
    valid = obs.valid
    q_all = flowlaws.discharge(flow_law, params, obs.width, obs.slope, obs.dA, obs.wse)
    q = np.full(valid.size, np.nan)
    q[valid] = q_all[valid]
    bad = int((~np.isfinite(q[valid])).sum())
    if bad:
        raise ItemError(
            f"reach {rid}: {algorithm} parameters {params} give no positive discharge at {bad} "
            f"of {int(valid.sum())} valid observations"
        )
    q_u = np.full(valid.size, np.nan)
    q_u[valid] = q_u_valid
    return FlpeResult(
        algorithm=algorithm,
        flow_law=flow_law,
        reach_id=rid,
        time=np.array(obs.time, float),
        q=q,
        q_u=q_u,
        params=params,
    )
