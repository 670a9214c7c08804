"""Offline discharge: Q recomputed from the observations with the (integrated) flow-law
parameters, its propagated uncertainty, and the consensus over algorithms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from confluence.science import flowlaws
from confluence.science.types import Observations

#: Relative uncertainty of the flow law itself (structural error), added in quadrature.
MODEL_RELATIVE_UNCERTAINTY = 0.4
#: MOMMA: nb = 0.11 S^0.18, so Q ~ S^(1/2 - 0.18).
MOMMA_SLOPE_EXPONENT = 0.5 - 0.18


def _sq(x) -> np.ndarray:
    """Square with a missing (NaN) observation uncertainty contributing nothing."""
    return np.nan_to_num(np.asarray(x, float), nan=0.0) ** 2


def observation_relative_uncertainty(
    flow_law: str,
    params: Mapping[str, float],
    width,
    width_u,
    slope,
    slope_u,
    dA,
    dA_u,
    wse=None,
    wse_u=None,
) -> np.ndarray:
    """First-order relative uncertainty of Q from the observation errors.

    Manning: u_rel^2 = (2 sW / 3W)^2 + (sS / 2S)^2 + (5 s_dA / 3A)^2 with A = A0 + dA.
    HiVDI and MetroMan change the exponents of A and W by beta (resp. -x1); MOMMA depends on
    W, S and the stage H through the depth H - B and its stage-dependent roughness. A missing
    observation uncertainty contributes nothing.
    """
    width, slope = np.asarray(width, float), np.asarray(slope, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if flow_law == "momma":
            B, Hb = params["B"], params["Hb"]
            depth = np.asarray(wse, float) - B
            ratio = np.log10((Hb - B) / depth)
            below = np.asarray(wse, float) <= Hb
            roughness = np.where(below, 1 + ratio, 1 - ratio)
            dlnn_dh = np.where(below, -1.0, 1.0) / (depth * np.log(10) * roughness)
            dlnq_dh = (5.0 / 3.0) / depth - dlnn_dh
            return np.sqrt(
                _sq(width_u / width)
                + _sq(MOMMA_SLOPE_EXPONENT * slope_u / slope)
                + _sq(dlnq_dh * wse_u)
            )
        area = params["A0"] + np.asarray(dA, float)
        if flow_law == "manning":
            area_exp, width_exp = 5.0 / 3.0, 2.0 / 3.0
        elif flow_law == "hivdi":
            area_exp, width_exp = 5.0 / 3.0 + params["beta"], 2.0 / 3.0 + params["beta"]
        elif flow_law == "metroman":
            area_exp, width_exp = 5.0 / 3.0 - params["x1"], 2.0 / 3.0 - params["x1"]
        else:
            raise ValueError(f"unknown flow law {flow_law!r}; known: {', '.join(flowlaws.LAWS)}")
        return np.sqrt(
            _sq(width_exp * width_u / width)
            + _sq(slope_u / (2 * slope))
            + _sq(area_exp * dA_u / area)
        )


def total_relative_uncertainty(u_rel, model_u: float = MODEL_RELATIVE_UNCERTAINTY) -> np.ndarray:
    """sqrt(u_rel^2 + model_u^2)."""
    return np.sqrt(np.asarray(u_rel, float) ** 2 + model_u**2)


def offline_discharge(
    flow_law: str,
    params: Mapping[str, float],
    obs: Observations,
    mask=None,
    model_u: float = MODEL_RELATIVE_UNCERTAINTY,
) -> tuple[np.ndarray, np.ndarray]:
    """Q and its total uncertainty (m^3/s) over all of ``obs``; NaN outside ``mask``/validity."""
    use = obs.valid if mask is None else (obs.valid & np.asarray(mask, bool))
    q = np.full(len(obs.time), np.nan)
    q_u = np.full(len(obs.time), np.nan)
    if not use.any():
        return q, q_u
    inputs = {"width": obs.width[use], "slope": obs.slope[use], "dA": obs.dA[use]}
    q[use] = flowlaws.discharge(flow_law, params, wse=obs.wse[use], **inputs)
    u_rel = observation_relative_uncertainty(
        flow_law,
        params,
        width=obs.width[use],
        width_u=obs.width_u[use],
        slope=obs.slope[use],
        slope_u=obs.slope_u[use],
        dA=obs.dA[use],
        dA_u=obs.dA_u[use],
        wse=obs.wse[use],
        wse_u=obs.wse_u[use],
    )
    q_u[use] = q[use] * total_relative_uncertainty(u_rel, model_u)
    return q, q_u


def consensus(series: Sequence[np.ndarray]) -> np.ndarray:
    """Median over algorithms at each time, ignoring missing values; NaN where none has one."""
    if not len(series):
        raise ValueError("consensus of no algorithms")
    stack = np.vstack([np.asarray(s, float) for s in series])
    out = np.full(stack.shape[1], np.nan)
    have = np.isfinite(stack).any(axis=0)
    out[have] = np.nanmedian(stack[:, have], axis=0)
    return out
