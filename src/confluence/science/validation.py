"""Validation of discharge estimates against gauges: date matching, skill metrics, hydrographs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

SECONDS_PER_DAY = 86400.0
#: Metric names, in the order they are written.
METRICS = ("nse", "kge", "rmse", "nrmse", "nbias", "r", "r2", "n")


def day_number(seconds) -> np.ndarray:
    """Whole days since 2000-01-01 of times in seconds since 2000-01-01 (UTC dates)."""
    return np.floor(np.asarray(seconds, float) / SECONDS_PER_DAY)


def match_gauge(sim_time, sim_q, gauge_time, gauge_q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (time, simulated, gauged) on the dates both have finite values.

    Every simulated observation is paired with the gauge's value of its date (a gauge has at
    most one value per day; if it has several, their mean is used).
    """
    sim_time, sim_q = np.asarray(sim_time, float), np.asarray(sim_q, float)
    gauge_time, gauge_q = np.asarray(gauge_time, float), np.asarray(gauge_q, float)
    keep = np.isfinite(gauge_q) & np.isfinite(gauge_time)
    g_days, inverse = np.unique(day_number(gauge_time[keep]), return_inverse=True)
    g_daily = np.bincount(inverse, weights=gauge_q[keep], minlength=g_days.size) / np.maximum(
        np.bincount(inverse, minlength=g_days.size), 1
    )
    ok = np.isfinite(sim_q) & np.isfinite(sim_time)
    s_time, s_q = sim_time[ok], sim_q[ok]
    if g_days.size == 0:
        return s_time[:0], s_q[:0], s_q[:0]
    s_days = day_number(s_time)
    pos = np.minimum(np.searchsorted(g_days, s_days), g_days.size - 1)
    found = g_days[pos] == s_days
    return s_time[found], s_q[found], g_daily[pos[found]]


def metrics(sim, gauge) -> dict[str, float]:
    """NSE, KGE, RMSE, nRMSE, nBIAS, Pearson r, R^2 (= r^2) and n of paired series.

    NaN where a metric is undefined (n = 0, or a constant gauge or simulation for the
    variance-based ones). Standard deviations are population (ddof = 0) ones.
    """
    s, g = np.asarray(sim, float), np.asarray(gauge, float)
    if s.shape != g.shape:
        raise ValueError(f"simulated {s.shape} and gauged {g.shape} series differ in shape")
    ok = np.isfinite(s) & np.isfinite(g)
    s, g = s[ok], g[ok]
    out = dict.fromkeys(METRICS, np.nan)
    out["n"] = int(s.size)
    if s.size == 0:
        return out
    error = s - g
    g_mean, s_mean = g.mean(), s.mean()
    out["rmse"] = float(np.sqrt(np.mean(error**2)))
    if g_mean != 0:
        out["nrmse"] = out["rmse"] / g_mean
        out["nbias"] = float(error.mean() / g_mean)
    g_var = np.sum((g - g_mean) ** 2)
    if g_var > 0:
        out["nse"] = float(1.0 - np.sum(error**2) / g_var)
    g_sd, s_sd = g.std(), s.std()
    if g_sd > 0 and s_sd > 0:
        r = float(np.mean((s - s_mean) * (g - g_mean)) / (s_sd * g_sd))
        out["r"], out["r2"] = r, r * r
        if g_mean != 0:
            out["kge"] = float(
                1.0 - np.sqrt((r - 1) ** 2 + (s_sd / g_sd - 1) ** 2 + (s_mean / g_mean - 1) ** 2)
            )
    return out


def plot_hydrograph(
    path,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    gauge: tuple[np.ndarray, np.ndarray],
    title: str,
) -> Path:
    """A small PNG hydrograph: the gauge record as a line, each estimate as markers.

    ``series`` maps a label to (time, q) with time in seconds since 2000-01-01; ``gauge`` is
    (time, q) likewise. matplotlib is imported here only, so that modules that do not plot
    do not pay for it.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def years(t):
        return 2000.0 + np.asarray(t, float) / (365.25 * SECONDS_PER_DAY)

    # Fixed margins and legend place: tight_layout and loc="best" cost more than the drawing.
    fig = Figure(figsize=(5, 2.5), dpi=72)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.18, top=0.88)
    ax = fig.add_subplot()
    g_time, g_q = gauge
    ax.plot(years(g_time), g_q, color="0.3", lw=1, label="gauge")
    for label, (time, q) in series.items():
        ok = np.isfinite(q)
        ax.plot(years(np.asarray(time)[ok]), np.asarray(q)[ok], "o-", ms=3, lw=0.8, label=label)
    ax.locator_params(nbins=5)
    ax.set_xlabel("year", fontsize=8)
    ax.set_ylabel("Q (m$^3$/s)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
