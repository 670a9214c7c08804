"""Quality diagnostics: the prediagnostic filter of SWOT observations and the postdiagnostic
flags of discharge estimates (realism against SoS priors, stability against a previous run).

Pure functions over arrays; NaN marks a fill value everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Reason name -> bit of the prediagnostics ``reasons`` bitmask (0 = the observation is kept).
REASON_BITS: dict[str, int] = {
    "fill_value": 1 << 0,  # W, H, S or dA missing
    "nonpositive_width_or_slope": 1 << 1,  # no flow law is defined there
    "width_outlier": 1 << 2,
    "wse_outlier": 1 << 3,
    "slope_outlier": 1 << 4,
    "ice": 1 << 5,
    "dark_water": 1 << 6,
    "low_observed_fraction": 1 << 7,
    "few_good_nodes": 1 << 8,
}

#: Tukey's fence factor: outliers lie beyond 1.5 interquartile ranges from the quartiles.
TUKEY_K = 1.5
#: Fewer values than this give no meaningful quartiles; the Tukey test is skipped then.
TUKEY_MIN_VALUES = 4


@dataclass(frozen=True)
class Thresholds:
    """Prediagnostic thresholds (the contract's defaults)."""

    max_dark_frac: float = 0.6
    min_obs_frac_n: float = 0.4
    min_good_nodes: int = 3
    #: SWOT ice flags: 0 no ice, 1 partial or uncertain, 2 ice covered. The climatological
    #: flag rejects only full cover (1 is a guess from the season); the dynamic flag, which
    #: saw the ice, rejects partial cover too.
    max_ice_clim_f: float = 1.0
    max_ice_dyn_f: float = 0.0
    tukey_k: float = TUKEY_K


def tukey_bounds(values, k: float = TUKEY_K) -> tuple[float, float]:
    """``(Q1 - k IQR, Q3 + k IQR)`` of the finite values; (-inf, inf) when there are too few."""
    data = np.asarray(values, float)
    data = data[np.isfinite(data)]
    if data.size < TUKEY_MIN_VALUES:
        return -np.inf, np.inf
    q1, q3 = np.percentile(data, [25.0, 75.0])
    iqr = q3 - q1
    return float(q1 - k * iqr), float(q3 + k * iqr)


def tukey_outliers(values, k: float = TUKEY_K, reference=None) -> np.ndarray:
    """True where a finite value lies outside the Tukey fences of ``reference`` (or itself)."""
    data = np.asarray(values, float)
    lo, hi = tukey_bounds(data if reference is None else reference, k)
    with np.errstate(invalid="ignore"):
        return np.isfinite(data) & ((data < lo) | (data > hi))


def _flag(values, n: int) -> np.ndarray:
    """A quality-flag series, or all-NaN when the file has none (NaN never rejects)."""
    return np.full(n, np.nan) if values is None else np.asarray(values, float)


def prediagnose(
    width,
    wse,
    slope,
    dA,
    *,
    ice_clim_f=None,
    ice_dyn_f=None,
    dark_frac=None,
    obs_frac_n=None,
    n_good_nod=None,
    thresholds: Thresholds = Thresholds(),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-observation validity mask (True = keep) and bitmask of reasons (see REASON_BITS).

    Flag thresholds are applied first; the Tukey fences of W, H and S are then computed from
    the observations that passed them, so that ice or dark-water observations do not widen
    the fences. A missing (NaN) quality flag does not reject an observation.
    """
    width, wse, slope, dA = (np.asarray(v, float) for v in (width, wse, slope, dA))
    n = width.size
    for name, values in (("wse", wse), ("slope", slope), ("dA", dA)):
        if values.shape != width.shape:
            raise ValueError(f"{name} has shape {values.shape}, width has {width.shape}")
    reasons = np.zeros(n, np.int32)

    def mark(name: str, where) -> None:
        reasons[np.asarray(where, bool)] |= REASON_BITS[name]

    fill = ~(np.isfinite(width) & np.isfinite(wse) & np.isfinite(slope) & np.isfinite(dA))
    mark("fill_value", fill)
    with np.errstate(invalid="ignore"):
        mark("nonpositive_width_or_slope", (width <= 0) | (slope <= 0))
        ice = (_flag(ice_clim_f, n) > thresholds.max_ice_clim_f) | (
            _flag(ice_dyn_f, n) > thresholds.max_ice_dyn_f
        )
        mark("ice", ice)
        mark("dark_water", _flag(dark_frac, n) > thresholds.max_dark_frac)
        mark("low_observed_fraction", _flag(obs_frac_n, n) < thresholds.min_obs_frac_n)
        mark("few_good_nodes", _flag(n_good_nod, n) < thresholds.min_good_nodes)

    passed_flags = reasons == 0
    for name, values in (("width", width), ("wse", wse), ("slope", slope)):
        outliers = tukey_outliers(values, thresholds.tukey_k, reference=values[passed_flags])
        mark(f"{name}_outlier", outliers)
    return reasons == 0, reasons


def decode_reasons(reasons: int) -> list[str]:
    """Names of the reasons set in one bitmask value."""
    return [name for name, bit in REASON_BITS.items() if int(reasons) & bit]


def flag_meanings() -> tuple[list[int], str]:
    """CF ``flag_masks`` and ``flag_meanings`` of the reasons bitmask."""
    return list(REASON_BITS.values()), " ".join(REASON_BITS)


# --------------------------------------------------------------------------------------------
# Postdiagnostics

#: Default stability tolerance: a mean discharge that moved by more than 25 % is unstable.
STABILITY_TOLERANCE = 0.25


def realism_flags(q, q_u, min_q: float, max_q: float) -> np.ndarray:
    """True where the whole interval [Q - u, Q + u] lies outside the SoS [min_q, max_q].

    Q within its uncertainty of the plausible range is realistic; NaN Q is never flagged,
    and a missing uncertainty counts as zero. A NaN bound of the range is not checked.
    """
    q = np.asarray(q, float)
    u = np.nan_to_num(np.abs(np.asarray(q_u, float)), nan=0.0, posinf=0.0)
    with np.errstate(invalid="ignore"):
        too_low = (q + u < min_q) if np.isfinite(min_q) else np.zeros(q.shape, bool)
        too_high = (q - u > max_q) if np.isfinite(max_q) else np.zeros(q.shape, bool)
    return np.isfinite(q) & (too_low | too_high)


def relative_change(time, q, previous_time, previous_q) -> float:
    """|mean Q - mean Q_prev| / mean Q_prev over the times both runs estimated; NaN if none."""
    time, q = np.asarray(time, float), np.asarray(q, float)
    previous_time, previous_q = np.asarray(previous_time, float), np.asarray(previous_q, float)
    ok_now, ok_before = np.isfinite(q) & np.isfinite(time), np.isfinite(previous_q)
    common, now_idx, before_idx = np.intersect1d(
        time[ok_now], previous_time[ok_before], return_indices=True
    )
    if common.size == 0:
        return np.nan
    now = q[ok_now][now_idx].mean()
    before = previous_q[ok_before][before_idx].mean()
    if not before > 0:
        return np.nan
    return float(abs(now - before) / before)


def stability_flag(change: float, tolerance: float = STABILITY_TOLERANCE) -> int:
    """1 unstable, 0 stable, -1 not assessed (no previous results on common dates)."""
    if not np.isfinite(change):
        return -1
    return int(change > tolerance)
