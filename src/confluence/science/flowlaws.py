"""The flow laws of the FLPE algorithms, written once and shared by FLPE, MOI and offline.

Each law maps parameters plus observations (W, H, S, dA) to discharge Q (m^3/s).
"""

from __future__ import annotations

import numpy as np

#: Flow law -> names of its parameters, in a fixed order.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "manning": ("n", "A0"),
    "hivdi": ("A0", "alpha", "beta"),
    "metroman": ("A0", "na", "x1"),
    "momma": ("B", "Hb"),
}

#: MOMMA's ratio r of the depth relation Y = (H - B) r / (1 + r).
MOMMA_R = 2.0


def manning(n, A0, width, slope, dA, wse=None):
    area = A0 + dA
    return (1.0 / n) * area ** (5 / 3) * width ** (-2 / 3) * slope**0.5


def hivdi(A0, alpha, beta, width, slope, dA, wse=None):
    area = A0 + dA
    return alpha * (area / width) ** beta * area ** (5 / 3) * width ** (-2 / 3) * slope**0.5


def metroman(A0, na, x1, width, slope, dA, wse=None):
    area = A0 + dA
    n = na * (area / width) ** x1
    return (1.0 / n) * area ** (5 / 3) * width ** (-2 / 3) * slope**0.5


def momma_n(B, Hb, slope, wse):
    nb = 0.11 * slope**0.18
    ratio = np.log10((Hb - B) / (wse - B))
    return np.where(wse <= Hb, nb * (1 + ratio), nb * (1 - ratio))


def momma(B, Hb, width, slope, wse, dA=None):
    depth = (wse - B) * MOMMA_R / (1 + MOMMA_R)
    velocity = depth ** (2 / 3) * slope**0.5 / momma_n(B, Hb, slope, wse)
    return width * depth * velocity


LAWS = {"manning": manning, "hivdi": hivdi, "metroman": metroman, "momma": momma}


def discharge(flow_law: str, params: dict[str, float], width, slope, dA, wse):
    """Q from a flow law; NaN where the area or depth is not positive."""
    args = {name: params[name] for name in PARAMETERS[flow_law]}
    with np.errstate(invalid="ignore", divide="ignore"):
        q = LAWS[flow_law](**args, width=width, slope=slope, dA=dA, wse=wse)
    q = np.asarray(q, float)
    return np.where(np.isfinite(q) & (q > 0), q, np.nan)
