"""MOI, the mean optimisation integrator: make each algorithm's discharge consistent across a
basin, then refit its flow-law parameters so that its mean discharge matches.

Per algorithm: (1) the mean Q of every reach; (2) a basin-consistent mean per reach: equal
along a river segment without confluences (the mean over the segment's reaches; without
topology the whole basin is one segment) and, at confluences, at least the sum of what flows
in (mass conservation), reached by the smallest weighted change of the segment means in log
space; (3) a bounded, minimal change of the flow-law parameters (SLSQP) that makes the
recomputed mean Q equal the basin value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from confluence.science import flowlaws
from confluence.science.types import FlpeResult, Observations

#: Manning's n (or the effective n of HiVDI and MetroMan) never goes below this.
MIN_N = 0.001
#: Relative mismatch of the refit mean Q to its target that still counts as a match.
REFIT_TOLERANCE = 1e-3
#: Above this many observed river segments in a basin, the means are only raised to their
#: inflow instead of reconciled (about 10 s per algorithm at this size).
MAX_RECONCILED_SEGMENTS = 600


@dataclass
class IntegratedResult:
    """One algorithm's integrated estimate for one reach."""

    algorithm: str
    flow_law: str
    reach_id: int
    time: np.ndarray
    q: np.ndarray
    q_u: np.ndarray
    params: dict[str, float]
    qbar_reach: float  # the algorithm's own mean Q of the reach
    qbar_basin: float  # the basin-consistent mean it was refit to
    refit_ok: bool  # the refit mean Q matches qbar_basin within REFIT_TOLERANCE
    flpe_params: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Basin-consistent means


def reach_mean(q) -> float:
    """Mean of the finite discharges; NaN when there are none."""
    q = np.asarray(q, float)
    q = q[np.isfinite(q)]
    return float(q.mean()) if q.size else np.nan


def river_segments(
    reach_ids: Sequence[int], upstream: Mapping[int, Sequence[int]]
) -> tuple[dict[int, int], dict[int, list[int]], dict[int, int]]:
    """Group reaches into segments: maximal chains whose links have no confluence or split.

    ``upstream[r]`` lists the reaches flowing directly into r; links to reaches outside
    ``reach_ids`` are ignored. Returns (segment of each reach, upstream segments of each
    segment, number of downstream segments of each segment).
    """
    nodes = [int(r) for r in reach_ids]
    known = set(nodes)
    ups = {r: sorted({int(u) for u in upstream.get(r, ()) if int(u) in known} - {r}) for r in nodes}
    downs: dict[int, list[int]] = {r: [] for r in nodes}
    for r, us in ups.items():
        for u in us:
            downs[u].append(r)

    parent = {r: r for r in nodes}

    def find(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for d, us in ups.items():
        if len(us) == 1 and len(downs[us[0]]) == 1:
            parent[find(us[0])] = find(d)
    segment = {r: find(r) for r in nodes}
    seg_up: dict[int, set[int]] = {s: set() for s in set(segment.values())}
    seg_down: dict[int, set[int]] = {s: set() for s in seg_up}
    for d, us in ups.items():
        for u in us:
            if segment[u] != segment[d]:
                seg_up[segment[d]].add(segment[u])
                seg_down[segment[u]].add(segment[d])
    return (
        segment,
        {s: sorted(v) for s, v in seg_up.items()},
        {s: len(v) for s, v in seg_down.items()},
    )


def _topological_order(seg_up: Mapping[int, Sequence[int]]) -> list[int]:
    """Segments from the headwaters down (Kahn); segments on or below a cycle are left out."""
    pending = {s: len(us) for s, us in seg_up.items()}
    seg_down: dict[int, list[int]] = {s: [] for s in seg_up}
    for s, us in seg_up.items():
        for u in us:
            seg_down[u].append(s)
    ready = sorted((s for s, k in pending.items() if k == 0), reverse=True)
    order = []
    while ready:
        s = ready.pop()
        order.append(s)
        for d in seg_down[s]:
            pending[d] -= 1
            if pending[d] == 0:
                ready.append(d)
    return order


def _inflow_coefficients(
    order: Sequence[int], seg_up: Mapping[int, Sequence[int]], n_down: Mapping[int, int], observed
) -> dict[int, dict[int, float]]:
    """For each segment, its inflow as a linear combination of observed segments' flows.

    A segment passes 1/n_down of its flow to each downstream branch. An unobserved segment
    carries exactly its inflow (any more would only tighten the constraints below it), so
    it passes its upstream observed segments' shares through.
    """
    carried: dict[int, dict[int, float]] = {}  # what a segment passes downstream, in total
    inflow: dict[int, dict[int, float]] = {}
    for s in order:
        total: dict[int, float] = {}
        for u in seg_up[s]:
            for source, c in carried[u].items():
                total[source] = total.get(source, 0.0) + c / n_down[u]
        inflow[s] = total
        carried[s] = {s: 1.0} if s in observed else total
    return inflow


def _raise_to_inflow(
    values: dict[int, float], order: Sequence[int], inflow: Mapping[int, Mapping[int, float]]
) -> dict[int, float]:
    """The smallest upward change that satisfies every constraint (a feasible start)."""
    out = dict(values)
    for s in order:
        if s in out and inflow[s]:
            out[s] = max(out[s], sum(c * out[u] for u, c in inflow[s].items()))
    return out


def _reconcile(
    own: Mapping[int, float],
    weight: Mapping[int, float],
    order: Sequence[int],
    inflow: Mapping[int, Mapping[int, float]],
) -> dict[int, float]:
    """Means as close as possible to ``own`` (weighted, in log space) that conserve mass.

    Minimises sum_s w_s (log b_s - log m_s)^2 subject to b_s >= sum_u c_su b_u at every
    observed segment with inflow (SLSQP); errors are shared between a segment and the ones
    flowing into it instead of being pushed downstream only.
    """
    from scipy import optimize  # imported here: most modules only need IntegratedResult

    segments = [s for s in order if s in own]
    start = _raise_to_inflow(dict(own), order, inflow)
    rows = [(s, inflow[s]) for s in segments if inflow[s]]
    if all(start[s] == own[s] for s in segments) or not rows:
        return start
    if len(segments) > MAX_RECONCILED_SEGMENTS:
        return start  # SLSQP is dense (cubic in size): keep huge basins tractable
    index = {s: i for i, s in enumerate(segments)}
    log_m = np.log([own[s] for s in segments])
    w = np.array([weight[s] for s in segments], float)
    ups = [(index[s], np.array([index[u] for u in c]), np.array(list(c.values()))) for s, c in rows]

    def constraints(y):
        return np.array([1.0 - np.sum(c * np.exp(y[u] - y[i])) for i, u, c in ups])

    def jacobian(y):
        jac = np.zeros((len(ups), len(y)))
        for k, (i, u, c) in enumerate(ups):
            terms = c * np.exp(y[u] - y[i])
            np.subtract.at(jac[k], u, terms)
            jac[k, i] += terms.sum()
        return jac

    y0 = np.log([start[s] for s in segments])
    with np.errstate(all="ignore"):
        solution = optimize.minimize(
            lambda y: float(np.sum(w * (y - log_m) ** 2)),
            y0,
            jac=lambda y: 2.0 * w * (y - log_m),
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": constraints, "jac": jacobian}],
            options={"maxiter": 200, "ftol": 1e-12},
        )
    if not (solution.success and np.all(np.isfinite(solution.x))):
        return start
    # Remove round-off violations: the result conserves mass exactly.
    solved = {s: float(np.exp(solution.x[index[s]])) for s in segments}
    return _raise_to_inflow(solved, order, inflow)


def basin_means(
    means: Mapping[int, float], upstream: Mapping[int, Sequence[int]] | None = None
) -> dict[int, float]:
    """Basin-consistent mean Q of each reach of ``means`` (NaN entries: reach without estimate).

    Without topology (``upstream`` None) every reach gets the mean over the basin's reaches.
    With it, the reaches of a segment (a chain without confluence) share the mean of their
    finite values, and the segment means are then reconciled so that every segment carries
    at least what flows into it (the sum of its upstream segments; a segment that splits
    passes an equal share to each branch): the smallest weighted change in log space, with
    the number of observed reaches of a segment as its weight (see ``_reconcile``). Reaches
    known only to the topology (unobserved) link segments through. Segments on or below a
    cycle keep their own mean. A reach without estimate gets what flows through it.
    """
    if upstream is None:
        basin = reach_mean(list(means.values()))
        return {int(r): basin for r in means}
    reach_ids = sorted({int(r) for r in means} | {int(r) for r in upstream})
    segment, seg_up, n_down = river_segments(reach_ids, upstream)
    values: dict[int, list[float]] = {s: [] for s in seg_up}
    for r, m in means.items():
        if np.isfinite(m) and m > 0:
            values[segment[int(r)]].append(float(m))
    own = {s: float(np.mean(v)) for s, v in values.items() if v}
    weight = {s: float(len(v)) for s, v in values.items() if v}
    order = _topological_order(seg_up)
    inflow = _inflow_coefficients(order, seg_up, n_down, set(own))
    result = dict(own)
    result.update(_reconcile(own, weight, order, inflow))
    for s in order:  # unobserved segments carry their inflow
        if s not in result and inflow[s]:
            result[s] = sum(c * result[u] for u, c in inflow[s].items())
    return {int(r): result.get(segment[int(r)], np.nan) for r in means}


# --------------------------------------------------------------------------------------------
# Refit


def _law_inputs(obs: Observations, mask: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "width": obs.width[mask],
        "slope": obs.slope[mask],
        "dA": obs.dA[mask],
        "wse": obs.wse[mask],
    }


def parameter_bounds(
    flow_law: str, params: Mapping[str, float], inputs: Mapping[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Bounds of the refit: hard physical limits, widened to include the FLPE estimate.

    A0 > -min(dA) keeps every area positive; n >= MIN_N; MOMMA's B stays below the lowest
    water surface and Hb above it.
    """
    dA, wse = inputs["dA"], inputs["wse"]
    span = float(np.ptp(dA)) if dA.size else 0.0
    area_floor = max(1e-3, 1e-3 * span)
    a0_lo = float(-np.min(dA)) + area_floor if dA.size else area_floor
    a0_ref = max(float(params.get("A0", a0_lo)), a0_lo)
    a0_hi = a0_ref + 10.0 * max(a0_ref - a0_lo, span, 1.0)
    soft = {
        "n": (MIN_N, 1.0),
        "A0": (a0_lo, a0_hi),
        "alpha": (0.1, 1e4),
        "beta": (-2.0, 2.0),
        "na": (MIN_N, 1.0),
        "x1": (-2.0, 2.0),
    }
    if flow_law == "momma":
        h_min, h_span = float(np.min(wse)), float(np.ptp(wse))
        soft["B"] = (h_min - max(50.0, 10.0 * h_span), h_min - 0.01)
        soft["Hb"] = (h_min, float(np.max(wse)) + max(10.0, h_span))
    hard_lo = {"n": MIN_N, "A0": a0_lo, "na": MIN_N, "alpha": 1e-6}
    hard_hi = {"B": soft.get("B", (0, np.inf))[1]}
    bounds = {}
    for name in flowlaws.PARAMETERS[flow_law]:
        lo, hi = soft[name]
        p0 = float(params[name])
        # Widen the soft limits to the FLPE's own estimate, never past a hard one.
        lo = min(lo, max(p0, hard_lo.get(name, -np.inf)))
        hi = max(hi, min(p0, hard_hi.get(name, np.inf)))
        bounds[name] = (lo, hi)
    return bounds


def _effective_n(flow_law: str, p: Mapping[str, float], inputs) -> np.ndarray | None:
    """Roughness of the laws whose n varies with the hydraulic radius (None for the others)."""
    if flow_law not in ("hivdi", "metroman"):
        return None
    depth = (p["A0"] + inputs["dA"]) / inputs["width"]
    if flow_law == "hivdi":
        return 1.0 / (p["alpha"] * depth ** p["beta"])
    return p["na"] * depth ** p["x1"]


def _origins(flow_law: str, inputs) -> dict[str, float]:
    """Per parameter, the value it must stay away from (optimised as log(|p - origin|)).

    n, alpha, na > 0; A0 > -min(dA) (positive area); B < min(H) (positive depth). Parameters
    absent here (exponents, bankfull stage) are optimised linearly.
    """
    origins = {"n": 0.0, "alpha": 0.0, "na": 0.0}
    if inputs["dA"].size:
        origins["A0"] = float(-np.min(inputs["dA"]))
    if flow_law == "momma":
        origins["B"] = float(np.min(inputs["wse"]))
    return origins


#: Step of the linearly optimised parameters that counts like a factor e of the others.
_LINEAR_SCALE = {"beta": 0.5, "x1": 0.5}


def refit_parameters(
    flow_law: str, params: Mapping[str, float], obs: Observations, mask, target: float
) -> tuple[dict[str, float], bool]:
    """The smallest relative parameter change that makes mean Q over ``mask`` equal ``target``.

    Minimises the squared relative change of the parameters (log(|p - origin|) for those
    with a physical limit, see ``_origins``) subject to mean Q(p) = target, the bounds of
    ``parameter_bounds`` and, for HiVDI and MetroMan, n(t) >= MIN_N at every time (SLSQP).
    When that fails (the target is out of reach within the bounds), fits the mean as closely
    as the bounds allow (L-BFGS-B). Returns the parameters and whether the mean matches
    within REFIT_TOLERANCE.
    """
    from scipy import optimize  # imported here: most modules only need IntegratedResult

    names = flowlaws.PARAMETERS[flow_law]
    mask = np.asarray(mask, bool)
    inputs = _law_inputs(obs, mask)
    if not (np.isfinite(target) and target > 0 and mask.any()):
        return dict(params), False
    if not all(np.isfinite(params.get(name, np.nan)) for name in names):
        return dict(params), False
    bounds = parameter_bounds(flow_law, params, inputs)
    origins = _origins(flow_law, inputs)
    lo = np.array([bounds[n][0] for n in names])
    hi = np.array([bounds[n][1] for n in names])
    p0 = np.clip([float(params[n]) for n in names], lo, hi)
    is_log = np.array([n in origins for n in names])
    origin = np.array([origins.get(n, 0.0) for n in names])
    offset = np.where(is_log, p0 - origin, 0.0)  # nonzero: the bounds keep p0 off its origin
    h_span = float(np.ptp(inputs["wse"])) if flow_law == "momma" else 0.0
    scale = np.array([_LINEAR_SCALE.get(n, max(h_span, 1.0)) for n in names])

    def to_params(u) -> np.ndarray:
        return np.where(is_log, origin + offset * np.exp(np.where(is_log, u, 0.0)), p0 + u * scale)

    def to_u(p) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(
                is_log, np.log((p - origin) / np.where(is_log, offset, 1.0)), (p - p0) / scale
            )

    u_edges = np.sort(np.vstack([to_u(lo), to_u(hi)]), axis=0)
    u_bounds = [
        (float(a) if np.isfinite(a) else None, float(b) if np.isfinite(b) else None)
        for a, b in u_edges.T
    ]
    log_target = np.log(target)

    def unpack(u) -> dict[str, float]:
        return dict(zip(names, to_params(u), strict=True))

    def mismatch(u) -> float:
        """log(mean Q / target); a large negative value outside the law's domain."""
        q = flowlaws.discharge(flow_law, unpack(u), **inputs)
        if not np.all(np.isfinite(q)):
            return -1e3
        return float(np.log(q.mean()) - log_target)

    def n_margin(u) -> np.ndarray:
        n = _effective_n(flow_law, unpack(u), inputs)
        return np.where(np.isfinite(n), n / MIN_N - 1.0, -1.0)

    has_n = _effective_n(flow_law, dict(params), inputs) is not None
    constraints = [{"type": "eq", "fun": mismatch}]
    if has_n:
        constraints.append({"type": "ineq", "fun": n_margin})

    def feasible(u) -> bool:
        return not has_n or bool(np.all(n_margin(u) >= -1e-6))

    def quality(u) -> tuple[bool, float]:
        """Sort key: feasible first, then the smaller mismatch."""
        return (not feasible(u), abs(mismatch(u)))

    start = np.zeros(len(names))
    candidates = [start]
    with np.errstate(all="ignore"):
        solution = optimize.minimize(
            lambda u: float(np.dot(u, u)),
            start,
            jac=lambda u: 2.0 * u,
            method="SLSQP",
            bounds=u_bounds,
            constraints=constraints,
            options={"maxiter": 100, "ftol": 1e-10},
        )
        candidates.append(np.clip(solution.x, u_edges[0], u_edges[1]))
        if abs(mismatch(candidates[-1])) > REFIT_TOLERANCE or not feasible(candidates[-1]):

            def misfit(u) -> float:
                penalty = np.sum(np.minimum(n_margin(u), 0.0) ** 2) if has_n else 0.0
                return mismatch(u) ** 2 + 1e3 * penalty + 1e-8 * float(np.dot(u, u))

            fallback = optimize.minimize(misfit, start, method="L-BFGS-B", bounds=u_bounds)
            candidates.append(np.clip(fallback.x, u_edges[0], u_edges[1]))
    best = min(candidates, key=quality)
    ok = feasible(best) and abs(mismatch(best)) <= REFIT_TOLERANCE
    return {name: float(v) for name, v in unpack(best).items()}, ok


# --------------------------------------------------------------------------------------------
# The basin


def integrate_basin(
    results: Mapping[int, Mapping[str, FlpeResult]],
    observations: Mapping[int, Observations],
    upstream: Mapping[int, Sequence[int]] | None = None,
) -> dict[int, dict[str, IntegratedResult]]:
    """Integrate every algorithm over one basin.

    ``results[reach][algorithm]`` are FLPE results aligned with ``observations[reach]`` (same
    times); ``upstream`` is the basin topology (None: unknown). An observation is used where
    the algorithm produced a finite Q and the observation itself is valid. Q is recomputed
    through the flow law with the refit parameters; its uncertainty keeps the FLPE's
    relative uncertainty.
    """
    algorithms = sorted({a for per_reach in results.values() for a in per_reach})
    out: dict[int, dict[str, IntegratedResult]] = {int(r): {} for r in results}
    for algorithm in algorithms:
        have = {int(r): per[algorithm] for r, per in results.items() if algorithm in per}
        means = {r: reach_mean(res.q) for r, res in have.items()}
        targets = basin_means(means, upstream)
        for r, res in have.items():
            obs = observations[r]
            if len(res.q) != len(obs.time):
                raise ValueError(
                    f"reach {r}: {algorithm} has {len(res.q)} times, the observations "
                    f"{len(obs.time)}; align them first"
                )
            mask = obs.valid & np.isfinite(res.q)
            params, ok = refit_parameters(res.flow_law, res.params, obs, mask, targets[r])
            q = np.full(len(obs.time), np.nan)
            if mask.any():
                q[mask] = flowlaws.discharge(res.flow_law, params, **_law_inputs(obs, mask))
            with np.errstate(invalid="ignore", divide="ignore"):
                relative_u = np.asarray(res.q_u, float) / np.asarray(res.q, float)
            out[r][algorithm] = IntegratedResult(
                algorithm=algorithm,
                flow_law=res.flow_law,
                reach_id=r,
                time=np.asarray(obs.time, float),
                q=q,
                q_u=q * relative_u,
                params=params,
                qbar_reach=means[r],
                qbar_basin=targets[r],
                refit_ok=ok,
                flpe_params=dict(res.params),
            )
    return out
