"""MetroMan: variable-roughness Manning n = na (A/W)^x1, estimated jointly over an inversion
set of adjacent reaches by Metropolis MCMC with mass conservation.

Mass conservation: between adjacent reaches without lateral inflow, and at SWOT's sparse
sampling (steady between passes), one discharge Q(t) passes through every reach of the set.
At the observation times common to all reaches (matched to the nearest observation within
half a day, see match_times), each reach's flow law gives log Q_r(t); the likelihood is that
they agree up to the observation errors (the offline error propagation of W, S, dA plus a
model error), with the shared log Q(t) profiled out as their precision-weighted mean.
Unlike a single reach, this identifies the baseline areas and roughness exponents (a wrong
A0 or x1 of one reach bends its hydrograph away from the others'); the common scale still
comes from the priors: SoS n per reach, the SoS area prior, x1 ~ N(X1_PRIOR) and the set's
mean flow.

Sampler: the posterior is a sum of squared misfits, so its mode comes from bounded
Levenberg-Marquardt. Metropolis-Hastings chains then sample it with independence proposals
from a defensive mixture of a Student-t fitted to the posterior by importance sampling and
the prior (see _metropolis). Convergence: acceptance rate and the Gelman-Rubin statistic of
the reported discharge statistics across chains.
"""

from __future__ import annotations

import warnings
from math import lgamma

import numpy as np

from confluence.contract import ItemError, set_id
from confluence.science.flpe_common import (
    METROMAN_MIN_VALID,
    ReachData,
    area_prior,
    least_squares,
    log_q_sd,
    make_result,
    prepare,
    reach_rng,
)
from confluence.science.types import FlpeResult, Observations, ReachPrior

#: Prior of the roughness exponent x1 (0 = Manning's constant n).
X1_PRIOR = (0.0, 0.3)
#: Observations of different reaches within half a day of each other are simultaneous.
MATCH_TOLERANCE = 43200.0
#: Largest acceptable Gelman-Rubin statistic of the reported discharge statistics; above
#: it the chains are rerun twice as long, at most MAX_ATTEMPTS times in all.
MAX_RHAT = 1.2
MAX_ATTEMPTS = 3
#: Every this many steps of the chains enter the Gelman-Rubin statistic (saves time).
RHAT_THINNING = 4
#: Below this acceptance rate the proposal misses the posterior: no convergence.
MIN_ACCEPTANCE = 0.01
#: Student-t proposal: degrees of freedom, scale over the fitted sd, share of prior draws.
PROPOSAL_DF = 8
PROPOSAL_INFLATION = 1.1
PRIOR_SHARE = 0.25
#: Importance-sampling rounds that fit the t: draws per round (per parameter) and the
#: widening of each round's proposal.
FIT_DRAWS_PER_DIM = 150
FIT_WIDENING = (2.0, 1.4)


def match_times(times: list[np.ndarray], tolerance: float = MATCH_TOLERANCE) -> np.ndarray:
    """Observations of all reaches taken at the same time, within ``tolerance`` seconds.

    The reach with the fewest observations is the reference; each of its times is matched
    to every other reach's nearest observation, and kept when all of them lie within the
    tolerance and no observation is used twice. Returns indices (reaches, matches) into each
    reach's ``times``.
    """
    reference = times[int(np.argmin([t.size for t in times]))]
    index = np.empty((len(times), reference.size), int)
    keep = np.ones(reference.size, bool)
    for r, t in enumerate(times):
        gap = np.abs(t[None, :] - reference[:, None])
        index[r] = np.argmin(gap, axis=1)
        keep &= gap[np.arange(reference.size), index[r]] <= tolerance
    for r in range(len(times)):  # an observation matched twice would count twice
        _, first = np.unique(np.where(keep, index[r], -1 - np.arange(keep.size)), return_index=True)
        unique = np.zeros(keep.size, bool)
        unique[first] = True
        keep &= unique
    return index[:, keep]


class _SetPosterior:
    """Log posterior of the set's parameters as a sum of squared residuals.

    A state row holds, per reach, (log Abar, u, x1): Abar the area of the mean observed
    state and u = log n at the mean depth Abar/mean(W), so that x1 bends the hydrograph
    without moving its level and the SoS n prior applies at the depth it describes.
    """

    def __init__(self, data: list[ReachData], priors: list[ReachPrior], index: np.ndarray):
        self.n_reach = len(data)
        area = [area_prior(d, p) for d, p in zip(data, priors, strict=True)]
        self.area_mu = np.array([mu for mu, _ in area])
        self.area_sd = np.array([sd for _, sd in area])
        self.log_abar_floor = np.array([d.log_abar_floor() for d in data])
        self.log_mean_width = np.log([np.mean(d.width) for d in data])
        deviation, log_w, core, sd = [], [], [], []
        for d, i, mu in zip(data, index, self.area_mu, strict=True):
            # Matched observations (reach, common time).
            deviation.append(d.deviation[i])
            log_w.append(np.log(d.width[i]))
            core.append(d.manning_core[i])
            prior_area = np.maximum(np.exp(mu) + d.deviation, 0.05 * np.exp(mu))
            sd.append(log_q_sd(d, prior_area)[i])
        self.deviation, self.log_w = np.stack(deviation), np.stack(log_w)
        self.core = np.stack(core)
        self.precision = 1.0 / np.stack(sd) ** 2
        self.root_precision = np.sqrt(self.precision)
        self.logn_hat = np.array([p.logn_hat for p in priors])
        self.logn_sd = np.array([p.logn_sd for p in priors])
        self.log_mean_q = float(np.mean([np.log(p.mean_q) for p in priors]))
        self.log_q_sd = float(np.mean([p.logQ_sd for p in priors]))

    @property
    def dims(self) -> int:
        return 3 * self.n_reach

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lower = np.column_stack(
            [self.log_abar_floor, self.logn_hat - 8 * self.logn_sd, np.full(self.n_reach, -2.0)]
        )
        upper = np.column_stack(
            [
                np.maximum(self.area_mu, self.log_abar_floor) + 10 * self.area_sd,
                self.logn_hat + 8 * self.logn_sd,
                np.full(self.n_reach, 2.0),
            ]
        )
        return lower.ravel(), upper.ravel()

    def start(self) -> np.ndarray:
        """Prior means, moved inside the bounds."""
        log_abar = np.maximum(self.area_mu, self.log_abar_floor + 0.05)
        return np.column_stack(
            [log_abar, self.logn_hat, np.full(self.n_reach, X1_PRIOR[0])]
        ).ravel()

    def prior_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Means and sds of the (independent Gaussian) prior of a state row."""
        x1_mean, x1_sd = X1_PRIOR
        mean = np.column_stack([self.area_mu, self.logn_hat, np.full(self.n_reach, x1_mean)])
        sd = np.column_stack([self.area_sd, self.logn_sd, np.full(self.n_reach, x1_sd)])
        return mean.ravel(), sd.ravel()

    def log_q(self, state: np.ndarray) -> np.ndarray:
        """log Q (chains, reach, time) at the matched observations."""
        s = state.reshape(-1, self.n_reach, 3)
        log_abar, u, x1 = (s[..., k : k + 1] for k in range(3))
        with np.errstate(invalid="ignore", divide="ignore"):
            log_area = np.log(np.exp(log_abar) + self.deviation)
        log_depth = log_area - self.log_w
        log_mean_depth = log_abar - self.log_mean_width[:, None]
        return -u - x1 * (log_depth - log_mean_depth) + 5 / 3 * log_area + self.core

    def residuals(self, state: np.ndarray) -> np.ndarray:
        """Normalised misfits (k, m): log posterior = -sum(residuals^2)/2 + constant."""
        s = state.reshape(-1, self.n_reach, 3)
        log_q = self.log_q(state)
        shared = np.sum(self.precision * log_q, axis=1) / self.precision.sum(axis=0)
        conservation = (self.root_precision * (log_q - shared[:, None, :])).reshape(len(s), -1)
        top = shared.max(axis=1, keepdims=True)
        log_mean = np.log(np.mean(np.exp(shared - top), axis=1)) + top[:, 0]
        out = np.concatenate(
            [
                conservation,
                ((log_mean - self.log_mean_q) / self.log_q_sd)[:, None],
                (s[..., 0] - self.area_mu) / self.area_sd,
                (s[..., 1] - self.logn_hat) / self.logn_sd,
                (s[..., 2] - X1_PRIOR[0]) / X1_PRIOR[1],
            ],
            axis=1,
        )
        return np.where(np.isfinite(out), out, 1e6)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        r = self.residuals(state)
        lp = -0.5 * np.einsum("ij,ij->i", r, r)
        inside = np.all(state.reshape(-1, self.n_reach, 3)[..., 0] > self.log_abar_floor, axis=1)
        return np.where(inside & np.isfinite(lp), lp, -np.inf)


def _gelman_rubin(chains: np.ndarray) -> np.ndarray:
    """R-hat per quantity of samples (steps, chains, quantities)."""
    steps = chains.shape[0]
    within = chains.var(axis=0, ddof=1).mean(axis=0)
    between = steps * chains.mean(axis=0).var(axis=0, ddof=1)
    pooled = (steps - 1) / steps * within + between / steps
    return np.sqrt(pooled / np.maximum(within, 1e-300))


def _log_t_density(z: np.ndarray, log_det: float) -> np.ndarray:
    """log density of a multivariate Student-t at standardised points z (..., dims)."""
    dims = z.shape[-1]
    df = PROPOSAL_DF
    const = lgamma((df + dims) / 2) - lgamma(df / 2) - dims / 2 * np.log(df * np.pi) - log_det
    return const - 0.5 * (df + dims) * np.log1p(np.sum(z * z, axis=-1) / df)


def _fit_t(log_post, centre, covariance, rng) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the posterior by importance sampling, starting from Laplace.

    The Gauss-Newton curvature at the mode misjudges some directions of this posterior by
    factors of 2-5 in variance; rounds of importance sampling from progressively narrower
    t distributions (FIT_WIDENING) refit them to the weighted draws.
    """
    dims = centre.size
    for widen in FIT_WIDENING:
        factor = widen * np.linalg.cholesky(covariance + 1e-10 * np.eye(dims))
        draws = FIT_DRAWS_PER_DIM * dims
        z = rng.standard_normal((draws, dims))
        z /= np.sqrt(rng.chisquare(PROPOSAL_DF, draws) / PROPOSAL_DF)[:, None]
        points = centre + z @ factor.T
        log_weight = log_post(points) - _log_t_density(z, 0.0)
        if not np.isfinite(log_weight.max()):
            break
        weight = np.exp(log_weight - log_weight.max())
        weight /= weight.sum()
        if 1.0 / np.sum(weight**2) < 2:  # one draw carries everything: nothing to refit
            break
        centre = weight @ points
        deviation = points - centre
        covariance = (weight[:, None] * deviation).T @ deviation
    return centre, covariance


def _metropolis(
    posterior: _SetPosterior, mode, covariance, rng, chains: int, steps: int, burn: int
) -> tuple[np.ndarray, float]:
    """Independence Metropolis-Hastings; returns kept states (steps - burn, chains, dims)
    and the acceptance rate.

    Proposal: a defensive mixture (Hesterberg 1995) of a Student-t fitted to the posterior
    (_fit_t, scale x PROPOSAL_INFLATION) and, with weight PRIOR_SHARE, the prior itself.
    The posterior has a long, curved tail toward uniformly larger areas (see metroman) that
    no single t matches; the prior component dominates the posterior there (posterior <=
    likelihood max x prior), so the importance weights stay bounded and no chain sticks.
    Proposals do not depend on the chain state, so all are evaluated in one vectorised call;
    only the accept/reject sweep is sequential.
    """
    dims = mode.size
    centre, covariance = _fit_t(posterior, mode, covariance, rng)
    factor = PROPOSAL_INFLATION * np.linalg.cholesky(covariance + 1e-10 * np.eye(dims))
    log_det = float(np.sum(np.log(np.diag(factor))))
    prior_mean, prior_sd = posterior.prior_moments()
    shape = (steps, chains)
    z = rng.standard_normal((*shape, dims))
    z /= np.sqrt(rng.chisquare(PROPOSAL_DF, shape) / PROPOSAL_DF)[..., None]
    from_prior = rng.random(shape) < PRIOR_SHARE
    prior_draws = prior_mean + prior_sd * rng.standard_normal((*shape, dims))
    proposals = np.where(from_prior[..., None], prior_draws, centre + z @ factor.T)
    standard = np.linalg.solve(factor, (proposals - centre).reshape(-1, dims).T).T
    log_t = _log_t_density(standard.reshape(*shape, dims), log_det)
    log_prior = -0.5 * np.sum(((proposals - prior_mean) / prior_sd) ** 2, axis=-1) - (
        np.sum(np.log(prior_sd)) + dims / 2 * np.log(2 * np.pi)
    )
    log_proposal = np.logaddexp(np.log1p(-PRIOR_SHARE) + log_t, np.log(PRIOR_SHARE) + log_prior)
    log_weight = posterior(proposals.reshape(-1, dims)).reshape(shape) - log_proposal
    log_u = np.log(rng.random(shape))
    current = np.zeros(chains, int)  # step index of each chain's current state
    chain = np.arange(chains)
    taken = np.empty(shape, int)
    accepted = 0
    with np.errstate(invalid="ignore"):  # -inf - -inf where a state is outside the support
        for step in range(steps):
            held = log_weight[current, chain]
            accept = (log_u[step] < log_weight[step] - held) | ~np.isfinite(held)
            accept &= np.isfinite(log_weight[step])
            current = np.where(accept, step, current)
            accepted += int(accept.sum())
            taken[step] = current
    return proposals[taken[burn:], chain], accepted / (steps * chains)


def _discharge_statistics(posterior: _SetPosterior, kept: np.ndarray) -> np.ndarray:
    """Per draw and reach, the mean and the spread over time of log Q (what q and q_u
    summarise), as (steps, chains, 2 * reaches) for the convergence check."""
    steps, chains, dims = kept.shape
    log_q = posterior.log_q(kept.reshape(-1, dims)).reshape(steps, chains, posterior.n_reach, -1)
    return np.concatenate([log_q.mean(axis=-1), log_q.std(axis=-1)], axis=-1)


def _usable_subset(set_obs, priors, name):
    """The largest part of the set that MetroMan can invert jointly.

    Every reach must be valid at the shared times, so one reach with few valid observations
    (ice, dark water, outliers at other dates) would sink the whole set. Such reaches are
    left out, one at a time, keeping the subset that shares the most times; they get no
    MetroMan estimate (downstream modules use the other algorithms for them).
    Raises ItemError, naming every reach and its reason, when no reach remains.
    """
    reasons: dict[int, str] = {}
    keep = []
    for o, p in zip(set_obs, priors, strict=True):
        try:
            keep.append((o, p, prepare(o, p, "metroman", METROMAN_MIN_VALID)))
        except ItemError as err:
            reasons[int(o.reach_id)] = str(err)

    def shared(members):
        times = [np.asarray(o.time, float)[o.valid] for o, _, _ in members]
        return match_times(times).shape[1]

    while len(keep) > 1 and shared(keep) < METROMAN_MIN_VALID:
        best = max(range(len(keep)), key=lambda i: shared(keep[:i] + keep[i + 1 :]))
        o = keep.pop(best)[0]
        reasons[int(o.reach_id)] = (
            f"reach {int(o.reach_id)}: left out, the other reaches share more valid times "
            "without it"
        )
    if not keep or shared(keep) < METROMAN_MIN_VALID:
        count = shared(keep) if keep else 0
        detail = "; ".join(reasons.values())
        raise ItemError(
            f"{name}: no part of the set shares {METROMAN_MIN_VALID} valid observation times "
            f"(matched within {MATCH_TOLERANCE / 3600:g} h; best {count})"
            + (f"; {detail}" if detail else "")
        )
    obs, pri, data = (list(x) for x in zip(*keep, strict=True))
    return obs, pri, data, reasons


def metroman(
    set_obs: list[Observations],
    priors: list[ReachPrior],
    rng=None,
    chains: int = 8,
    burn: int = 20,
    keep: int = 600,
) -> list[FlpeResult]:
    """Joint estimate of (A0, na, x1) for every reach of an inversion set; one result per reach.

    Parameters are the posterior mode; q_u is the posterior sd of Q from the chains. The mode,
    not the mean: uniformly larger areas and roughness flatten every reach's hydrograph
    alike, which mass conservation cannot rule out, so the posterior has a long tail in that
    direction that drags marginal means toward flat hydrographs (in tests with exact data
    the mean lost 0.05 of NSE in the median case and far more in the worst).

    Raises ItemError naming the set's reach IDs when a reach has too few valid observations,
    when fewer than METROMAN_MIN_VALID times are common to all reaches, or when the chains do
    not converge (Gelman-Rubin above MAX_RHAT even after MAX_ATTEMPTS lengthenings).
    """
    if len(set_obs) != len(priors) or not set_obs:
        raise ItemError(
            f"metroman: {len(set_obs)} reaches of observations but {len(priors)} priors"
        )
    ids = [int(o.reach_id) for o in set_obs]
    name = f"set {set_id(ids)}"
    rng = reach_rng(ids) if rng is None else rng
    set_obs, priors, data, left_out = _usable_subset(set_obs, priors, name)
    for reason in left_out.values():
        warnings.warn(f"{name}: {reason}", stacklevel=2)
    index = match_times([np.asarray(o.time, float)[o.valid] for o in set_obs])
    posterior = _SetPosterior(data, priors, index)
    lower, upper = posterior.bounds()
    fit = least_squares(posterior.residuals, posterior.start(), lower, upper)
    if not (fit.converged and np.isfinite(fit.cost)):
        raise ItemError(
            f"{name}: metroman found no posterior mode (Levenberg-Marquardt did not converge, "
            f"cost {fit.cost:.3g})"
        )
    for attempt in range(MAX_ATTEMPTS):  # longer chains until they agree
        steps = burn + keep * 2**attempt
        kept, acceptance = _metropolis(posterior, fit.x, fit.covariance(), rng, chains, steps, burn)
        rhat = _gelman_rubin(_discharge_statistics(posterior, kept[::RHAT_THINNING]))
        if acceptance >= MIN_ACCEPTANCE and np.nanmax(rhat) <= MAX_RHAT:
            break
    else:
        raise ItemError(
            f"{name}: metroman chains did not converge (acceptance {acceptance:.2f}, largest "
            f"Gelman-Rubin R-hat {np.nanmax(rhat):.2f}); the reaches' observations may "
            "disagree with one shared discharge"
        )
    samples = kept.reshape(-1, posterior.dims)
    thin = samples[rng.choice(samples.shape[0], size=min(400, samples.shape[0]), replace=False)]
    results = []
    for r, (o, d) in enumerate(zip(set_obs, data, strict=True)):
        log_abar, u, x1 = fit.x[3 * r : 3 * r + 3]
        params = {
            "A0": float(np.exp(log_abar) - d.dA.mean()),
            "na": float(np.exp(u - x1 * (log_abar - posterior.log_mean_width[r]))),
            "x1": float(x1),
        }
        t_abar, t_u, t_x1 = (thin[:, 3 * r + k][:, None] for k in range(3))
        with np.errstate(invalid="ignore", divide="ignore"):
            log_area = np.log(np.exp(t_abar) + d.deviation[None, :])
        log_depth = log_area - np.log(d.width)
        log_mean_depth = t_abar - posterior.log_mean_width[r]
        log_q = -t_u - t_x1 * (log_depth - log_mean_depth) + 5 / 3 * log_area
        q_u = np.nanstd(np.exp(log_q + d.manning_core), axis=0)
        results.append(make_result(o, "metroman", "metroman", params, q_u))
    return results
