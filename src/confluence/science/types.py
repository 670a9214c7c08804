"""Data passed between the science functions and the module wrappers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observations:
    """One reach's SWOT time series; NaN marks a fill value. Units: m, m, m/m, m^2, s."""

    reach_id: int
    time: np.ndarray  # seconds since 2000-01-01
    width: np.ndarray
    wse: np.ndarray
    slope: np.ndarray
    dA: np.ndarray
    width_u: np.ndarray
    wse_u: np.ndarray
    slope_u: np.ndarray
    dA_u: np.ndarray
    #: False where prediagnostics (or a fill value) rejected the observation.
    valid: np.ndarray

    def __post_init__(self):
        self.valid = (
            np.asarray(self.valid, bool)
            & np.isfinite(self.width)
            & np.isfinite(self.wse)
            & np.isfinite(self.slope)
            & np.isfinite(self.dA)
            & (self.slope > 0)
            & (self.width > 0)
        )

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


@dataclass
class ReachPrior:
    """SoS priors of one reach (model group and gbpriors/reach group)."""

    reach_id: int
    mean_q: float
    min_q: float
    max_q: float
    logQ_sd: float = 0.5
    logn_hat: float = np.log(0.03)
    logn_sd: float = 0.25
    logDb_hat: float = np.nan
    logDb_sd: float = 0.5
    logWb_hat: float = np.nan
    logWb_sd: float = 0.3
    logr_hat: float = np.log(2.0)
    logr_sd: float = 0.3


@dataclass
class FlpeResult:
    """What an FLPE algorithm (or MOI) estimated for one reach."""

    algorithm: str
    flow_law: str
    reach_id: int
    time: np.ndarray
    q: np.ndarray  # NaN where the observation was invalid
    q_u: np.ndarray
    params: dict[str, float] = field(default_factory=dict)
