"""Discharge priors from gauge records: the statistics the SoS model group holds.

Pure functions: daily discharge (and its time) in, statistics out. The priors module uses
them to replace model priors by gauge statistics at calibration gauges (constrained runs);
the synthetic generator uses the same functions for its model priors, so both are defined
identically.
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_DAY = 86400.0
#: Exceedance probabilities (percent) of the SoS flow-duration curve ``flow_duration_q``:
#: 20 values, high flows first, as in the operational SoS (``model/probability``).
FLOW_DURATION_PROBABILITIES = np.array([1.0, *np.arange(5.0, 100.0, 5.0)])
#: A block of 365 days counts as a year of annual maxima when this share of days is present.
MIN_YEAR_COVERAGE = 0.8
#: Fewer valid daily values than this are not a basis for priors (the model's are kept).
MIN_GAUGE_DAYS = 365
#: Euler-Mascheroni constant of the Gumbel (EV1) distribution's mean.
EULER_GAMMA = 0.5772156649015329
MODEL_STATISTICS = ("mean_q", "min_q", "max_q", "two_year_return_q", "flow_duration_q")


def flow_duration(q, probabilities=FLOW_DURATION_PROBABILITIES) -> np.ndarray:
    """Discharge exceeded ``p`` percent of the time, for each p; NaN without data."""
    values = np.asarray(q, float)
    values = values[np.isfinite(values)]
    probabilities = np.asarray(probabilities, float)
    if values.size == 0:
        return np.full(probabilities.shape, np.nan)
    return np.percentile(values, 100.0 - probabilities)


def annual_maxima(q, time, min_coverage: float = MIN_YEAR_COVERAGE) -> np.ndarray:
    """Maximum of each 365-day block from the first valid day (time in seconds).

    Blocks with less than ``min_coverage`` of their days present are dropped, so that a
    gap does not pass for a dry year. Records are rarely calendar-aligned; consecutive
    blocks are as good a definition of "a year" for a 2-year return period.
    """
    q = np.asarray(q, float)
    time = np.asarray(time, float)
    keep = np.isfinite(q) & np.isfinite(time)
    if not keep.any():
        return np.zeros(0)
    day = np.floor((time[keep] - time[keep].min()) / SECONDS_PER_DAY).astype(np.int64)
    block = day // 365
    nblocks = int(block.max()) + 1
    counts = np.bincount(block, minlength=nblocks)
    maxima = np.full(nblocks, -np.inf)
    np.maximum.at(maxima, block, q[keep])
    return maxima[counts >= min_coverage * 365]


def two_year_return(maxima) -> float:
    """The 2-year return discharge from annual maxima: Gumbel (EV1) by the method of moments.

    ``Q_T = u - alpha ln(-ln(1 - 1/T))`` with ``alpha = sqrt(6) s / pi`` and
    ``u = mean - 0.5772 alpha``; one maximum is returned as is, none gives NaN.
    """
    maxima = np.asarray(maxima, float)
    maxima = maxima[np.isfinite(maxima)]
    if maxima.size == 0:
        return float("nan")
    if maxima.size == 1:
        return float(maxima[0])
    alpha = np.sqrt(6.0) * maxima.std(ddof=1) / np.pi
    location = maxima.mean() - EULER_GAMMA * alpha
    return float(location - alpha * np.log(-np.log(1.0 - 1.0 / 2.0)))


def discharge_statistics(
    q, time, probabilities=FLOW_DURATION_PROBABILITIES
) -> dict[str, float | np.ndarray]:
    """mean_q, min_q, max_q, two_year_return_q and flow_duration_q of a daily record."""
    values = np.asarray(q, float)
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        nan = float("nan")
        return {
            "mean_q": nan,
            "min_q": nan,
            "max_q": nan,
            "two_year_return_q": nan,
            "flow_duration_q": np.full(np.shape(probabilities), np.nan),
        }
    return {
        "mean_q": float(valid.mean()),
        "min_q": float(valid.min()),
        "max_q": float(valid.max()),
        "two_year_return_q": two_year_return(annual_maxima(values, time)),
        "flow_duration_q": flow_duration(valid, probabilities),
    }


def usable_for_priors(q, min_days: int = MIN_GAUGE_DAYS) -> bool:
    """Whether a gauge record is long enough to replace model priors."""
    return int(np.isfinite(np.asarray(q, float)).sum()) >= min_days


def replace_model_priors(
    model: dict[str, np.ndarray], rows, statistics: list[dict]
) -> dict[str, np.ndarray]:
    """A copy of the SoS model group with ``rows`` set to the given gauge statistics.

    A statistic that is NaN (e.g. no complete year for the 2-year return) keeps the model's
    value: a missing gauge statistic is no reason to lose a prior.
    """
    updated = {name: np.array(values, dtype=float, copy=True) for name, values in model.items()}
    for row, stats in zip(rows, statistics, strict=True):
        for name in MODEL_STATISTICS:
            if name not in stats or name not in updated:
                continue
            value = np.asarray(stats[name], float)
            current = updated[name][row]
            updated[name][row] = np.where(np.isfinite(value), value, current)
    return updated
