"""The synthetic domain's files: SWORD, the previous SoS, gauges, raw SWOT granules, truth.

Deterministic from the config's ``domain`` section: the same spec gives the same science
values. For one continent, ``generate`` builds a known daily discharge per reach that
conserves mass along the topology of ``confluence.domain.synthetic_topology`` (each reach
carries the flow of its upstream reaches plus its lateral inflow), turns it into SWOT
observables through Manning's equation with a constant n per reach and at-many-stations
hydraulic geometry, samples it on SWOT-like passes with SWOT-like errors and quality flags,
and writes every file in the layouts of ``confluence.ncio``. docs/synthetic-domain.md
describes the files, the error levels and their sources.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time as timer
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from confluence import contract, ncio
from confluence.domain import Domain, synthetic_topology
from confluence.science import priors as science_priors

# --- independent random streams: changing one part of the spec leaves the others alone ------
STREAMS = {
    "geometry": 1,
    "climate": 2,
    "truth": 3,
    "model": 4,
    "priors": 5,
    "faulty": 6,
    "gauges": 7,
    "orbit": 8,
    "flags": 9,
    "noise": 10,
}

# --- hydrology ------------------------------------------------------------------------------
#: Length of the simulated "model run" (climatology) behind the model priors and geometry.
CLIMATE_YEARS = 20
#: Gauges have this much record before the observation period (2-year return needs years).
GAUGE_HISTORY_DAYS = 10 * 365
#: Days simulated and dropped before a series starts, so recessions are in equilibrium.
SPIN_UP_DAYS = 120
#: Median specific runoff (m^3/s per km^2, about 380 mm/yr) and its spread between basins.
RUNOFF_MEDIAN = 0.012
RUNOFF_LOG_SD = 0.4
#: Drainage area entering each headwater reach from upstream (km^2): the synthetic rivers
#: start where SWOT sees them (>= 50-100 m wide), not at their sources.
HEADWATER_AREA_MEDIAN = 20_000.0
#: Lognormal event sizes (relative to the mean flow) and the events per year.
EVENT_SIZE_MEDIAN = 2.0
EVENT_SIZE_LOG_SD = 0.7
LOCAL_EVENTS_PER_YEAR = 3.0
#: Model priors' error: a lognormal bias per reach (~40 %, the WBM-like model error of the
#: Confluence priors), on top of the model simulating other weather than the truth.
MODEL_LOG_ERROR = 0.4

# --- geometry -------------------------------------------------------------------------------
NODE_SPACING_M = 200.0
MIN_NODES, MAX_NODES = 10, 40
#: Continent boxes (lon min, lon max, lat min, lat max) for basin outlets.
CONTINENT_BOXES = {
    "af": (-17.0, 50.0, -35.0, 35.0),
    "eu": (-10.0, 40.0, 36.0, 70.0),
    "as": (60.0, 150.0, 0.0, 70.0),
    "oc": (113.0, 178.0, -45.0, -10.0),
    "sa": (-80.0, -35.0, -55.0, 10.0),
    "na": (-125.0, -70.0, 25.0, 60.0),
}
METRES_PER_DEGREE = 111_195.0

# --- SWOT sampling --------------------------------------------------------------------------
REPEAT_DAYS = 21  # SWOT's science orbit repeats every 20.86 days
ORBIT_PASSES = 584  # passes (half orbits) per repeat cycle
PASSES_PER_CONTINENT = 4
#: Probabilities that a reach is seen by 1, 2 or 3 passes per cycle (mid latitudes: ~2).
PASSES_PER_REACH_P = (0.35, 0.45, 0.20)
#: Nadir gap and swath edge of the 120 km wide swath (cross-track distance, m).
SWATH_NEAR, SWATH_FAR = 10_000.0, 60_000.0

# --- SWOT errors (noise = true); sources in docs/synthetic-domain.md -------------------------
#: WSE: 10 cm (1 sigma) averaged over 1 km^2 of water (SWOT Science Requirements).
WSE_ERROR_PER_KM2 = 0.10
#: Slope: 1.7 cm/km (1 sigma) over a 10 km reach (SWOT Science Requirements).
SLOPE_ERROR_10KM = 1.7e-5
#: Width: 15 % relative (1 sigma) for reach widths (SWOT Science Requirements).
WIDTH_REL_ERROR = 0.15
#: Node widths scatter more than reach widths (a node averages ~1/20 of the pixels).
NODE_WIDTH_REL_ERROR = 0.20
#: Gross WSE errors (layover, misclassified water) of this share of observations, 1-3 m.
OUTLIER_RATE = 0.02
#: Flagged observations (dark water, partial coverage, ice) get this many times the error.
DEGRADED_ERROR_FACTOR = 3.0
#: Gauge (rating-curve) error, 1 sigma relative: "good" USGS records are within 10 %.
GAUGE_REL_ERROR = 0.05
#: Share of missing gauge days, and chance of one multi-week outage per gauge.
GAUGE_MISSING_RATE = 0.03
GAUGE_OUTAGE_P = 0.3


def _rng(spec: dict, continent: str, stream: str) -> np.random.Generator:
    order = list(contract.CONTINENTS).index(continent)
    return np.random.default_rng([int(spec.get("seed", 0)), order, 1000 + STREAMS[stream]])


# =============================================================================================
# Topology and geometry


@dataclass
class Network:
    """One continent's reaches with downstream indices and levels (hops from the outlet)."""

    reach_id: np.ndarray
    reach_dn: np.ndarray  # downstream reach ID, 0 at an outlet
    dn: np.ndarray  # downstream index, -1 at an outlet
    length: np.ndarray  # m
    basin: np.ndarray  # index into basin_ids
    basin_ids: np.ndarray
    level: np.ndarray

    def __len__(self) -> int:
        return len(self.reach_id)

    def accumulate(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` over each reach and everything upstream of it (rows = reaches)."""
        total = np.array(values, dtype=float, copy=True)
        for lvl in range(int(self.level.max(initial=0)), 0, -1):
            idx = np.flatnonzero(self.level == lvl)
            np.add.at(total, self.dn[idx], total[idx])
        return total

    def downstream_first(self):
        """Index arrays of the reaches level by level, outlets first (for values propagated
        from downstream, e.g. bed elevation)."""
        for lvl in range(1, int(self.level.max(initial=0)) + 1):
            yield np.flatnonzero(self.level == lvl)

    def upstream_ids(self) -> list[list[int]]:
        ups: list[list[int]] = [[] for _ in range(len(self))]
        for i in np.flatnonzero(self.dn >= 0):
            ups[self.dn[i]].append(int(self.reach_id[i]))
        return ups


def network(domain: Domain, continent: str) -> Network:
    part = domain.continent_slice(continent)
    if part.stop <= part.start:
        raise ValueError(
            f"continent {continent!r} has no reaches in the synthetic domain; add it to "
            "domain.continents"
        )
    ids = domain.reach_id[part]
    dn = domain.downstream_index[part]
    dn = np.where(dn >= 0, dn - part.start, -1)
    level = np.where(dn < 0, 0, -1)
    while (level < 0).any():
        ready = (level < 0) & (level[np.maximum(dn, 0)] >= 0)
        if not ready.any():
            raise ValueError(f"continent {continent}: the topology has a cycle")
        level[ready] = level[dn[ready]] + 1
    basin_ids, basin = np.unique(ids // 10**7, return_inverse=True)
    return Network(
        reach_id=ids,
        reach_dn=domain.reach_dn[part],
        dn=dn,
        length=domain.reach_length[part],
        basin=basin,
        basin_ids=basin_ids,
        level=level,
    )


@dataclass
class Geometry:
    """True per-reach geometry and hydraulics (the parameters the FLPE algorithms seek)."""

    facc: np.ndarray  # km^2
    local_area: np.ndarray  # km^2 draining laterally into the reach
    x: np.ndarray  # reach centre lon, lat
    y: np.ndarray
    dist_out: np.ndarray  # m, outlet to the reach's upstream end
    n: np.ndarray  # Manning's n
    b: np.ndarray  # AHG width exponent
    width_coef: np.ndarray  # a in Wc = a Qc^0.5
    slope: np.ndarray  # S0, m/m, at Qc
    slope_exp: np.ndarray  # S = S0 (Q/Qc)^slope_exp
    bed: np.ndarray  # bed elevation at the reach centre, m
    n_nodes: np.ndarray
    node_start: np.ndarray  # first node of each reach in the node arrays
    node_id: np.ndarray
    node_reach: np.ndarray  # reach index of each node
    node_pos: np.ndarray  # m from the reach's downstream end
    node_width_factor: np.ndarray  # persistent along-reach width variation, mean 1 per reach
    node_x: np.ndarray
    node_y: np.ndarray
    # set once the climatology is known
    qc: np.ndarray | None = None
    wc: np.ndarray | None = None
    a0: np.ndarray | None = None


def geometry(net: Network, continent: str, rng: np.random.Generator) -> Geometry:
    nr, nb = len(net), len(net.basin_ids)
    length_km = net.length / 1000.0
    local = length_km * rng.uniform(8.0, 30.0, nr)
    headwater = np.bincount(net.dn[net.dn >= 0], minlength=nr) == 0
    head = np.where(headwater, HEADWATER_AREA_MEDIAN * np.exp(0.5 * rng.standard_normal(nr)), 0)
    local_area = local + head
    facc = net.accumulate(local_area)

    # Positions: each basin's outlet in the continent's box, rivers heading upstream in a
    # basin-wide direction with meanders between reaches.
    lon0, lon1, lat0, lat1 = CONTINENT_BOXES[continent]
    out_lon = rng.uniform(lon0 + 3, lon1 - 3, nb)
    out_lat = rng.uniform(lat0 + 3, lat1 - 3, nb)
    heading = rng.uniform(0, 2 * np.pi, nb)[net.basin] + 0.5 * rng.standard_normal(nr)
    x, y = out_lon[net.basin].copy(), out_lat[net.basin].copy()
    dist_out = net.length.copy()
    slope = np.clip(
        2.5e-4 * np.exp(0.5 * rng.standard_normal(nr)) * (facc / 1e4) ** -0.15, 4e-5, 3e-3
    )
    bed = rng.uniform(5.0, 400.0, nb)[net.basin]
    for idx in net.downstream_first():
        d = net.dn[idx]
        step = 0.5 * (net.length[d] + net.length[idx])
        y[idx] = y[d] + step * np.cos(heading[idx]) / METRES_PER_DEGREE
        x[idx] = x[d] + step * np.sin(heading[idx]) / (METRES_PER_DEGREE * np.cos(np.radians(y[d])))
        dist_out[idx] = dist_out[d] + net.length[idx]
        bed[idx] = bed[d] + 0.5 * (slope[d] * net.length[d] + slope[idx] * net.length[idx])

    n_nodes = np.clip(np.round(net.length / NODE_SPACING_M), MIN_NODES, MAX_NODES).astype(int)
    node_start = np.cumsum(n_nodes) - n_nodes
    node_reach = np.repeat(np.arange(nr), n_nodes)
    k = np.arange(n_nodes.sum()) - node_start[node_reach]
    spacing = net.length / n_nodes
    node_pos = (k + 0.5) * spacing[node_reach]
    # SWORD node IDs CBBBBBRRRRNNNT: the reach ID without its type digit, a 3-digit node
    # number counted from the downstream end, the type digit.
    rid = net.reach_id[node_reach]
    node_id = (rid // 10) * 10**4 + (k + 1) * 10 + rid % 10
    wfac = np.exp(0.1 * rng.standard_normal(node_reach.size))
    wfac /= np.bincount(node_reach, wfac)[node_reach] / n_nodes[node_reach]
    along = node_pos - 0.5 * net.length[node_reach]  # from the reach centre, + upstream
    node_y = y[node_reach] + along * np.cos(heading[node_reach]) / METRES_PER_DEGREE
    node_x = x[node_reach] + along * np.sin(heading[node_reach]) / (
        METRES_PER_DEGREE * np.cos(np.radians(y[node_reach]))
    )
    return Geometry(
        facc=facc,
        local_area=local_area,
        x=x,
        y=y,
        dist_out=dist_out,
        n=rng.uniform(0.025, 0.045, nr),
        b=rng.uniform(0.12, 0.32, nr),
        width_coef=7.0 * np.exp(0.2 * rng.standard_normal(nr)),
        slope=slope,
        slope_exp=rng.uniform(-0.05, 0.10, nr),
        bed=bed,
        n_nodes=n_nodes,
        node_start=node_start,
        node_id=node_id,
        node_reach=node_reach,
        node_pos=node_pos,
        node_width_factor=wfac,
        node_x=node_x,
        node_y=node_y,
    )


# =============================================================================================
# Hydrology


@dataclass
class Climate:
    """Per-basin hydrological regime, shared by the truth and the model run."""

    amplitude: np.ndarray  # seasonal amplitude (relative)
    peak_day: np.ndarray  # day of year of the seasonal peak
    events_per_year: np.ndarray
    recession_days: np.ndarray
    runoff: np.ndarray  # m^3/s per km^2


def climate(nb: int, rng: np.random.Generator) -> Climate:
    return Climate(
        amplitude=rng.uniform(0.3, 0.8, nb),
        peak_day=rng.uniform(0.0, 365.0, nb),
        events_per_year=rng.uniform(4.0, 10.0, nb),
        recession_days=rng.uniform(3.0, 12.0, nb),
        runoff=RUNOFF_MEDIAN * np.exp(RUNOFF_LOG_SD * rng.standard_normal(nb)),
    )


def _event_train(rng, rows: int, days: int, per_year: np.ndarray, recession: np.ndarray):
    """Mean-1 flow pulses: Poisson events of lognormal size with exponential recessions."""
    impulses = (rng.random((rows, days)) < (per_year / 365.25)[:, None]) * rng.lognormal(
        np.log(EVENT_SIZE_MEDIAN), EVENT_SIZE_LOG_SD, (rows, days)
    )
    out = np.empty_like(impulses)
    keep = np.exp(-1.0 / recession)
    for k in np.unique(keep):
        sel = keep == k
        out[sel] = lfilter([1.0], [1.0, -k], impulses[sel], axis=1)
    size_mean = EVENT_SIZE_MEDIAN * np.exp(0.5 * EVENT_SIZE_LOG_SD**2)
    expected = (per_year / 365.25) * size_mean / (1.0 - keep)
    return out / expected[:, None]


def lateral_inflow(
    net: Network, geo: Geometry, clim: Climate, day0: int, days: int, rng: np.random.Generator
) -> np.ndarray:
    """Daily lateral inflow [nr, days] from day number ``day0`` (days since 2000-01-01)."""
    total = days + SPIN_UP_DAYS
    day = np.arange(day0 - SPIN_UP_DAYS, day0 + days, dtype=float)
    basin = net.basin
    seasonal = 1.0 + clim.amplitude[basin, None] * np.cos(
        2 * np.pi * (day[None, :] - clim.peak_day[basin, None]) / 365.25
    )
    basin_events = _event_train(
        rng, len(net.basin_ids), total, clim.events_per_year, clim.recession_days
    )
    local_events = _event_train(
        rng, len(net), total, np.full(len(net), LOCAL_EVENTS_PER_YEAR), clim.recession_days[basin]
    )
    signal = 0.55 * seasonal + 0.45 * (0.7 * basin_events[basin] + 0.3 * local_events)
    mean = clim.runoff[basin] * geo.local_area
    return mean[:, None] * signal[:, SPIN_UP_DAYS:]


def hydraulics(q: np.ndarray, geo: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Width, slope and area for discharge q [nr, nt]: AHG width, Manning area.

    ``W = Wc (Q/Qc)^b``, ``S = S0 (Q/Qc)^e``, and A solves Manning's
    ``Q = (1/n) A^(5/3) W^(-2/3) S^(1/2)``.
    """
    ratio = q / geo.qc[:, None]
    width = geo.wc[:, None] * ratio ** geo.b[:, None]
    slope = geo.slope[:, None] * ratio ** geo.slope_exp[:, None]
    area = (q * geo.n[:, None] * width ** (2 / 3) / np.sqrt(slope)) ** 0.6
    return width, slope, area


def set_reference_geometry(geo: Geometry, climatology: np.ndarray) -> None:
    """Qc = median climatological flow; Wc = a Qc^0.5 (downstream hydraulic geometry);
    A0 = the area at Qc, so dA = A - A0 is zero at the median flow."""
    geo.qc = np.median(climatology, axis=1)
    geo.wc = geo.width_coef * np.sqrt(geo.qc)
    geo.a0 = (geo.qc * geo.n * geo.wc ** (2 / 3) / np.sqrt(geo.slope)) ** 0.6


def wse_ref(geo: Geometry) -> np.ndarray:
    """Water-surface elevation at the reference flow Qc (where dA = 0)."""
    return geo.bed + geo.a0 / geo.wc


# =============================================================================================
# Truth


@dataclass
class Truth:
    """The true state of one continent's reaches over the observation period (daily)."""

    reach_id: np.ndarray
    reach_dn: np.ndarray  # 0 at an outlet
    time: np.ndarray  # seconds since 2000-01-01, 00:00 of each day
    q: np.ndarray  # [nr, nt] daily mean discharge
    q_lateral: np.ndarray  # [nr, nt] q = q_lateral + sum of upstream q
    width: np.ndarray
    wse: np.ndarray
    slope: np.ndarray
    d_x_area: np.ndarray
    n: np.ndarray  # Manning's n per reach
    A0: np.ndarray  # area at the reference flow qc (dA = 0)
    qc: np.ndarray
    wc: np.ndarray
    b: np.ndarray
    slope_ref: np.ndarray
    slope_exponent: np.ndarray
    bed_elevation: np.ndarray
    wse_ref: np.ndarray
    facc: np.ndarray
    reach_length: np.ndarray
    faulty: np.ndarray  # bool: given fewer than 4 observations on purpose
    gauged: np.ndarray  # bool


TRUTH_SERIES = ("q", "q_lateral", "width", "wse", "slope", "d_x_area")
TRUTH_PARAMS = (
    "n",
    "A0",
    "qc",
    "wc",
    "b",
    "slope_ref",
    "slope_exponent",
    "bed_elevation",
    "wse_ref",
    "facc",
    "reach_length",
)


def truth_name(continent: str) -> str:
    return f"{continent}_truth.nc"


def write_truth(path, truth: Truth) -> None:
    nr, nt = np.shape(truth.q)
    with ncio.create_dataset(path, title="Synthetic domain: true discharge and geometry") as ds:
        ds.createDimension("num_reaches", nr)
        ds.createDimension("num_days", nt)
        r, rt = ("num_reaches",), ("num_reaches", "num_days")
        ds.createVariable("reach_id", "i8", r)[...] = truth.reach_id
        ds.createVariable("reach_dn", "i8", r)[...] = truth.reach_dn
        ncio.put_float(ds, "time", truth.time, ("num_days",), units=ncio.TIME_UNITS)
        for name in TRUTH_SERIES:
            ncio.put_float(ds, name, getattr(truth, name), rt)
        for name in TRUTH_PARAMS:
            ncio.put_float(ds, name, getattr(truth, name), r)
        ncio.put_int(ds, "faulty", truth.faulty.astype(np.int32), r)
        ncio.put_int(ds, "gauged", truth.gauged.astype(np.int32), r)


def read_truth(path) -> Truth:
    with ncio.open_dataset(path, "synthetic truth") as ds:
        values = {name: ncio.get_float(ds, name) for name in TRUTH_SERIES + TRUTH_PARAMS}
        return Truth(
            reach_id=ncio.get_int(ds, "reach_id"),
            reach_dn=ncio.get_int(ds, "reach_dn"),
            time=ncio.get_float(ds, "time"),
            faulty=ncio.get_int(ds, "faulty") == 1,
            gauged=ncio.get_int(ds, "gauged") == 1,
            **values,
        )


# =============================================================================================
# Files of the input file system


def sword_of(net: Network, geo: Geometry) -> ncio.Sword:
    nr = len(net)
    up = np.zeros((ncio.SWORD_NEIGHBOURS, nr), np.int64)
    dn = np.zeros((ncio.SWORD_NEIGHBOURS, nr), np.int64)
    n_up = np.zeros(nr, np.int64)
    for i, ids in enumerate(net.upstream_ids()):
        # SWORD lists at most four neighbours; keep the largest tributaries.
        ids = sorted(ids, key=lambda r: -geo.facc[np.searchsorted(net.reach_id, r)])[:4]
        up[: len(ids), i] = ids
        n_up[i] = len(ids)
    dn[0] = net.reach_dn
    return ncio.Sword(
        reach_id=net.reach_id,
        reach_length=net.length,
        dist_out=geo.dist_out,
        wse=wse_ref(geo),
        width=geo.wc,
        slope=geo.slope * 1000.0,  # SWORD slopes are m/km
        facc=geo.facc,
        rch_id_up=up,
        rch_id_dn=dn,
        n_rch_up=n_up,
        n_rch_down=(net.dn >= 0).astype(np.int64),
        node_id=geo.node_id,
        node_reach_id=net.reach_id[geo.node_reach],
        node_dist_out=geo.dist_out[geo.node_reach] - net.length[geo.node_reach] + geo.node_pos,
        x=geo.x,
        y=geo.y,
        node_x=geo.node_x,
        node_y=geo.node_y,
    )


def model_priors(model_q: np.ndarray, day0: int) -> dict[str, np.ndarray]:
    """SoS model group from a model run [nr, days]: the statistics of science.priors."""
    time = (day0 + np.arange(model_q.shape[1])) * ncio.SECONDS_PER_DAY
    stats = [science_priors.discharge_statistics(row, time) for row in model_q]
    model = {
        name: np.array([s[name] for s in stats], float) for name in science_priors.MODEL_STATISTICS
    }
    model["probability"] = science_priors.FLOW_DURATION_PROBABILITIES.copy()
    return model


def gbpriors(
    geo: Geometry, model: dict, model_q: np.ndarray, clim_q: np.ndarray, rng
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """geoBAM priors per reach and node: the true geometry with errors of realistic size."""
    nr = len(geo.n)
    # Bankfull: the 2-year return flow of the (unbiased) climatology.
    years = clim_q.shape[1] // 365
    maxima = clim_q[:, : years * 365].reshape(nr, years, 365).max(axis=2)
    qb = np.array([science_priors.two_year_return(m) for m in maxima])
    wb, _, ab = (v[:, 0] for v in hydraulics(qb[:, None], geo))
    db = ab / wb
    # Channel shape r of W ~ Y^(1/r): with Manning, b = 3 / (3 + 5 r).
    r = np.clip(0.6 * (1.0 / geo.b - 1.0), 0.5, 10.0)

    def noisy(value, sd):
        return value + sd * rng.standard_normal(nr)

    reach = {
        "logQ_hat": np.log(model["mean_q"]),
        "logQ_sd": np.sqrt(np.log(model_q).std(axis=1) ** 2 + MODEL_LOG_ERROR**2),
        "lowerbound_logQ": np.log(model["min_q"] / 2.0),
        "upperbound_logQ": np.log(model["max_q"] * 2.0),
    }
    for name, truth, error, sd in (
        ("logn", np.log(geo.n), 0.25, 0.25),
        ("logA0", np.log(geo.a0), 0.4, 0.5),
        ("logWb", np.log(wb), 0.1, 0.15),
        ("logDb", np.log(db), 0.4, 0.5),
        ("logr", np.log(r), 0.2, 0.3),
    ):
        hat = noisy(truth, error)
        reach[f"{name}_hat"] = hat
        reach[f"{name}_sd"] = np.full(nr, sd)
        reach[f"lowerbound_{name}"] = hat - 3 * sd
        reach[f"upperbound_{name}"] = hat + 3 * sd
    reach["lowerbound_A0"] = np.exp(reach.pop("lowerbound_logA0"))
    reach["upperbound_A0"] = np.exp(reach.pop("upperbound_logA0"))
    reach["b_hat"] = np.clip(noisy(geo.b, 0.04), 0.02, 0.8)
    reach["b_sd"] = np.full(nr, 0.07)
    reach["lowerbound_b"] = np.full(nr, 0.01)
    reach["upperbound_b"] = np.full(nr, 0.8)

    at = geo.node_reach
    log_wfac = np.log(geo.node_width_factor)
    node = {
        "logn_hat": reach["logn_hat"][at],
        "logn_sd": reach["logn_sd"][at],
        "logA0_hat": reach["logA0_hat"][at] + log_wfac,
        "logA0_sd": reach["logA0_sd"][at],
        "logWb_hat": reach["logWb_hat"][at] + log_wfac,
        "logWb_sd": reach["logWb_sd"][at],
        "logDb_hat": reach["logDb_hat"][at],
        "logDb_sd": reach["logDb_sd"][at],
        "logr_hat": reach["logr_hat"][at],
        "logr_sd": reach["logr_sd"][at],
        "b_hat": reach["b_hat"][at],
        "b_sd": reach["b_sd"][at],
    }
    return reach, node


def _faulty_count(spec: dict, continent: str) -> int:
    value = spec.get("faulty_reaches", 0) or 0
    if isinstance(value, dict):
        value = value.get(continent, 0)
    return int(value)


def choose_faulty(nr: int, count: int, rng) -> np.ndarray:
    """Bool mask of the faulty reaches: ``count`` reaches drawn from the continent's stream."""
    mask = np.zeros(nr, bool)
    mask[rng.permutation(nr)[: min(count, nr)]] = True
    return mask


def choose_gauged(nr: int, fraction: float, exclude: np.ndarray, rng) -> np.ndarray:
    """Bool mask of gauged reaches: ``round(fraction * nr)`` (at least one if fraction > 0)
    among the reaches that are not faulty."""
    mask = np.zeros(nr, bool)
    if fraction <= 0:
        return mask
    count = max(1, int(round(fraction * nr)))
    candidates = np.flatnonzero(~exclude)
    mask[rng.permutation(candidates)[: min(count, candidates.size)]] = True
    return mask


def gauge_records(
    continent: str,
    net: Network,
    gauged: np.ndarray,
    q: np.ndarray,
    day0: int,
    noise: bool,
    rng,
) -> ncio.GaugeRecords:
    """Daily records of the gauged reaches from ``q`` [nr, days] starting at day ``day0``."""
    rows = np.flatnonzero(gauged)
    ng, nd = rows.size, q.shape[1]
    agency = "USGS" if continent == "na" else "GRDC"
    values = q[rows].copy()
    if noise:
        values *= np.exp(GAUGE_REL_ERROR * rng.standard_normal(values.shape))
    values[rng.random(values.shape) < GAUGE_MISSING_RATE] = np.nan
    for g in range(ng):
        if rng.random() < GAUGE_OUTAGE_P:
            start = rng.integers(0, nd)
            values[g, start : start + rng.integers(7, 40)] = np.nan
    digits = 8 if agency == "USGS" else 7
    numbers = rng.choice(9 * 10 ** (digits - 1), size=ng, replace=False) + 10 ** (digits - 1)
    return ncio.GaugeRecords(
        reach_id=net.reach_id[rows],
        station_id=[f"{int(n):0{digits}d}" for n in numbers],
        agency=[agency] * ng,
        cal=np.arange(ng) % 2 == 0,  # every other gauge (in reach order) calibrates
        time=(day0 + np.arange(nd)) * ncio.SECONDS_PER_DAY,
        q=values,
    )


# =============================================================================================
# SWOT observations


@dataclass
class Schedule:
    """Every observation: reach index, pass, cycle, time and cross-track distance."""

    reach: np.ndarray
    pass_number: np.ndarray
    cycle: np.ndarray
    time: np.ndarray
    day: np.ndarray  # index into the observation period's days
    xtrk: np.ndarray


def schedule(
    net: Network, geo: Geometry, day0: int, days: int, faulty: np.ndarray, rng
) -> Schedule:
    """When SWOT sees each reach: 1-3 passes per 21-day cycle; faulty reaches 1-3 times."""
    nr, nb = len(net), len(net.basin_ids)
    passes = np.sort(rng.choice(np.arange(1, ORBIT_PASSES + 1), PASSES_PER_CONTINENT, False))
    pass_day = rng.integers(0, REPEAT_DAYS, PASSES_PER_CONTINENT)
    pass_clock = rng.uniform(0.0, 86400.0 - 3600.0, PASSES_PER_CONTINENT)
    # Each basin lies under up to three of the continent's passes; a reach under 1-3 of them.
    candidates = np.argsort(rng.random((nb, PASSES_PER_CONTINENT)), axis=1)[:, :3]
    seen_by = rng.choice([1, 2, 3], size=nr, p=PASSES_PER_REACH_P)
    side = rng.choice([-1.0, 1.0], size=(nr, PASSES_PER_CONTINENT))
    xtrk = side * rng.uniform(SWATH_NEAR, SWATH_FAR, (nr, PASSES_PER_CONTINENT))
    reach_idx, pass_idx = [], []
    for k in range(3):
        sel = np.flatnonzero(seen_by > k)
        reach_idx.append(sel)
        pass_idx.append(candidates[net.basin[sel], k])
    reach_idx, pass_idx = np.concatenate(reach_idx), np.concatenate(pass_idx)

    cycles = np.arange(int(np.ceil(days / REPEAT_DAYS)) + 1)
    r = np.repeat(reach_idx, cycles.size)
    p = np.repeat(pass_idx, cycles.size)
    c = np.tile(cycles, reach_idx.size)
    # Along-track timing: ~16 s per degree of latitude at 7 km/s ground speed.
    seconds = (c * REPEAT_DAYS + pass_day[p]) * 86400.0 + pass_clock[p] + 16.0 * (geo.y[r] + 90)
    day = np.floor(seconds / 86400.0).astype(np.int64)
    inside = day < days
    r, p, c, seconds, day = r[inside], p[inside], c[inside], seconds[inside], day[inside]

    # Faulty reaches: at the swath edge of their passes, usually missed; keep 1-3 records.
    keep = np.ones(r.size, bool)
    for i in np.flatnonzero(faulty):
        mine = np.flatnonzero(r == i)
        wanted = min(int(rng.integers(1, 4)), mine.size)
        keep[mine] = False
        keep[rng.choice(mine, wanted, replace=False)] = True
    r, p, c, seconds, day = r[keep], p[keep], c[keep], seconds[keep], day[keep]
    order = np.lexsort((net.reach_id[r], p, c))
    r, p, c, seconds, day = r[order], p[order], c[order], seconds[order], day[order]
    xt = xtrk[r, p] + 200.0 * rng.standard_normal(r.size)
    return Schedule(
        reach=r,
        pass_number=passes[p],
        cycle=c + 1,
        time=day0 * 86400.0 + seconds,
        day=day,
        xtrk=xt,
    )


def _ice_flags(lat: np.ndarray, time: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Climatological and dynamic ice flags (0 none, 1 partial/uncertain, 2 ice).

    Rivers above 45 degrees latitude freeze from December to March (June to September in
    the south); 40-45 degrees are uncertain in those months.
    """
    dates = np.datetime64("2000-01-01") + np.floor(time / 86400.0).astype("timedelta64[D]")
    doy = (dates - dates.astype("datetime64[Y]")).astype(np.int64) + 1
    winter_n = (doy >= 335) | (doy <= 90)
    winter_s = (doy >= 152) & (doy <= 273)
    winter = np.where(lat >= 0, winter_n, winter_s)
    absolute = np.abs(lat)
    clim = np.where(winter & (absolute >= 45), 2, np.where(winter & (absolute >= 40), 1, 0))
    draw = rng.random(lat.size)
    dyn = np.where(
        clim == 2, np.where(draw < 0.7, 2, 1), np.where((clim == 1) & (draw < 0.3), 1, 0)
    )
    return clim, dyn


def observe(
    net: Network,
    geo: Geometry,
    sched: Schedule,
    series: dict[str, np.ndarray],
    noise: bool,
    flag_rng,
    noise_rng,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Reach and node records of every scheduled observation (ncio granule fields)."""
    r, day, nobs = sched.reach, sched.day, sched.reach.size
    true = {name: series[name][r, day] for name in ("width", "wse", "slope", "d_x_area")}
    length, wc = net.length[r], geo.wc[r]
    h0 = wse_ref(geo)[r]

    # Quality: mostly good; some dark water, partial coverage, ice; flags match the errors.
    dark = flag_rng.beta(1.0, 25.0, nobs)
    darkened = flag_rng.random(nobs) < 0.05
    dark[darkened] = flag_rng.uniform(0.6, 0.95, darkened.sum())
    obs_frac = flag_rng.uniform(0.8, 1.0, nobs)
    partial = flag_rng.random(nobs) < 0.05
    obs_frac[partial] = flag_rng.uniform(0.1, 0.4, partial.sum())
    ice_clim, ice_dyn = _ice_flags(geo.y[r], sched.time, flag_rng)
    outlier = flag_rng.random(nobs) < OUTLIER_RATE
    degraded = (dark > 0.6) | (obs_frac < 0.4) | (ice_dyn > 0)
    suspect = (dark > 0.3) | (obs_frac < 0.6) | (flag_rng.random(nobs) < 0.08)
    reach_q = np.where(degraded | outlier, 2, np.where(suspect, 1, 0))

    # Error levels (1 sigma) per observation, from the SWOT requirements.
    sd_wse = np.clip(WSE_ERROR_PER_KM2 * np.sqrt(1e6 / (wc * length)), 0.03, 0.25)
    sd_slope = np.clip(SLOPE_ERROR_10KM * (10_000.0 / length) ** 1.5, 3e-6, 1e-4)
    sd_width = WIDTH_REL_ERROR * true["width"]
    reach = {
        "time": sched.time,
        "width_u": sd_width,
        "wse_u": sd_wse,
        "slope2_u": sd_slope,
        "d_x_area_u": np.sqrt((true["width"] * sd_wse) ** 2 + ((true["wse"] - h0) * sd_width) ** 2),
        "reach_q": reach_q.astype(float),
        "dark_frac": dark,
        "ice_clim_f": ice_clim.astype(float),
        "ice_dyn_f": ice_dyn.astype(float),
        "obs_frac_n": obs_frac,
        "xtrk_dist": sched.xtrk,
    }
    err_wse = np.zeros(nobs)
    err_width = np.zeros(nobs)
    err_slope = np.zeros(nobs)
    width_scale = np.ones(nobs)
    if noise:
        factor = np.where(degraded, DEGRADED_ERROR_FACTOR, 1.0)
        err_wse = factor * sd_wse * noise_rng.standard_normal(nobs)
        err_width = factor * sd_width * noise_rng.standard_normal(nobs)
        err_slope = factor * sd_slope * noise_rng.standard_normal(nobs)
        err_wse += outlier * noise_rng.choice([-1.0, 1.0], nobs) * noise_rng.uniform(1, 3, nobs)
        # Dark water and partial coverage hide water: widths come out too narrow; ice
        # raises the measured surface.
        width_scale = np.where((dark > 0.6) | (obs_frac < 0.4), 1.0 - 0.5 * dark, 1.0)
        err_wse += np.where(ice_dyn > 0, noise_rng.uniform(0.2, 1.0, nobs), 0.0)
    reach["width"] = true["width"] * width_scale + err_width
    reach["wse"] = true["wse"] + err_wse
    reach["slope2"] = true["slope"] + err_slope
    reach["d_x_area"] = (
        true["d_x_area"]
        + true["width"] * err_wse
        + (true["wse"] - h0) * (reach["width"] - true["width"])
    )

    # Nodes: every node of the reach per observation; unobserved nodes are fill.
    counts = geo.n_nodes[r]
    rec_obs = np.repeat(np.arange(nobs), counts)
    first = np.cumsum(counts) - counts
    node = geo.node_start[r][rec_obs] + (np.arange(counts.sum()) - first[rec_obs])
    nrec = node.size
    wfac = geo.node_width_factor[node]
    along = geo.node_pos[node] - 0.5 * length[rec_obs]
    node_width_true = true["width"][rec_obs] * wfac
    node_wse_true = true["wse"][rec_obs] + true["slope"][rec_obs] * along
    spacing = length[rec_obs] / counts[rec_obs]
    sd_node_wse = np.clip(WSE_ERROR_PER_KM2 * np.sqrt(1e6 / (node_width_true * spacing)), 0.05, 1.0)
    node_err_wse = np.zeros(nrec)
    node_err_width = np.zeros(nrec)
    if noise:
        node_err_wse = sd_node_wse * noise_rng.standard_normal(nrec)
        node_err_width = NODE_WIDTH_REL_ERROR * node_width_true * noise_rng.standard_normal(nrec)
    node_width = (
        node_width_true * width_scale[rec_obs] * (1 + err_width[rec_obs] / true["width"][rec_obs])
        + node_err_width
    )
    node_wse = node_wse_true + err_wse[rec_obs] + node_err_wse
    seen = flag_rng.random(nrec) < obs_frac[rec_obs]
    node_q = np.where(seen, np.where(reach_q[rec_obs] > 0, 1.0, 0.0), 3.0)
    sd_node_width = np.hypot(WIDTH_REL_ERROR, NODE_WIDTH_REL_ERROR) * node_width_true
    nodes = {
        "time": sched.time[rec_obs],
        "width": node_width,
        "width_u": sd_node_width,
        "wse": node_wse,
        "wse_u": np.hypot(sd_wse[rec_obs], sd_node_wse),
        # The node product has no slope of its own: nodes carry their reach's slope.
        "slope2": reach["slope2"][rec_obs],
        "slope2_u": sd_slope[rec_obs],
        "d_x_area": true["d_x_area"][rec_obs] * wfac
        + node_width_true * (node_wse - node_wse_true)
        + (node_wse_true - h0[rec_obs]) * (node_width - node_width_true),
        "d_x_area_u": np.hypot(
            node_width_true * np.hypot(sd_wse[rec_obs], sd_node_wse),
            (node_wse_true - h0[rec_obs]) * sd_node_width,
        ),
        "node_q": node_q,
        "dark_frac": np.clip(dark[rec_obs] + 0.05 * flag_rng.standard_normal(nrec), 0, 1),
        "ice_clim_f": ice_clim[rec_obs].astype(float),
        "ice_dyn_f": ice_dyn[rec_obs].astype(float),
        "xtrk_dist": sched.xtrk[rec_obs] + 300.0 * flag_rng.standard_normal(nrec),
    }
    for name in ("width", "width_u", "wse", "wse_u", "slope2", "slope2_u", "d_x_area"):
        nodes[name] = np.where(seen, nodes[name], np.nan)
    nodes["d_x_area_u"] = np.where(seen, nodes["d_x_area_u"], np.nan)
    reach["n_good_nod"] = np.bincount(
        rec_obs, weights=(seen & (node_q <= 1)).astype(float), minlength=nobs
    )
    nodes["node_id"] = geo.node_id[node]
    nodes["reach_index"] = r[rec_obs]
    nodes["obs_index"] = rec_obs
    return reach, nodes


def write_granules(
    directory: Path, net: Network, sched: Schedule, reach: dict, nodes: dict
) -> list[Path]:
    """One granule per (cycle, pass) with records, named as the SWOT RiverSP products."""
    directory.mkdir(parents=True, exist_ok=True)
    key = sched.cycle * 1000 + sched.pass_number
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    node_obs = nodes["obs_index"]
    node_bounds = np.searchsorted(node_obs, bounds)
    paths = []
    for k in range(bounds.size - 1):
        lo, hi = bounds[k], bounds[k + 1]
        nlo, nhi = node_bounds[k], node_bounds[k + 1]
        granule = ncio.Granule(
            cycle=int(sched.cycle[lo]),
            pass_number=int(sched.pass_number[lo]),
            reach_id=net.reach_id[sched.reach[lo:hi]],
            reach={f: reach[f][lo:hi] for f in ncio.GRANULE_REACH_FIELDS},
            node_id=nodes["node_id"][nlo:nhi],
            node_reach_id=net.reach_id[nodes["reach_index"][nlo:nhi]],
            node={f: nodes[f][nlo:nhi] for f in ncio.GRANULE_NODE_FIELDS},
        )
        path = directory / ncio.granule_name(granule.cycle, granule.pass_number)
        ncio.write_granule(path, granule)
        paths.append(path)
    return paths


# =============================================================================================
# The generator


def _day_number(date: str) -> int:
    """Days since 2000-01-01 of a YYYY-MM-DD date."""
    try:
        day = dt.date.fromisoformat(str(date))
    except ValueError:
        raise ValueError(f"domain.start: {date!r} is not a YYYY-MM-DD date") from None
    return (day - dt.date(2000, 1, 1)).days


def generate(spec: dict, continent: str, input_dir, truth_dir) -> dict:
    """Write one continent's synthetic files; returns a summary (counts, paths, timings).

    Files: ``input_dir/sword/{c}_sword_v16.nc``, ``input_dir/sos/previous/{c}_sword_v16_SOS_
    priors.nc``, ``input_dir/gage/{c}_gauges.nc``, ``input_dir/swot_raw/{c}/SWOT_L2_HR_
    RiverSP_{cycle}_{pass}.nc`` (if ``spec["observations"]``) and ``truth_dir/{c}_truth.nc``.
    """
    started = timer.perf_counter()
    if continent not in contract.CONTINENTS:
        raise ValueError(
            f"continent {continent!r} is unknown; allowed: {', '.join(contract.CONTINENTS)}"
        )
    input_dir, truth_dir = Path(input_dir), Path(truth_dir)
    days = int(spec.get("days", 150))
    if days < 1:
        raise ValueError(f"domain.days: {days} must be at least 1")
    day0 = _day_number(spec.get("start", "2023-07-26"))
    noise = bool(spec.get("noise", True))

    net = network(synthetic_topology(spec), continent)
    nr = len(net)
    geo = geometry(net, continent, _rng(spec, continent, "geometry"))
    clim = climate(len(net.basin_ids), _rng(spec, continent, "climate"))

    # The long-run hydrology (a model's weather, unbiased) fixes the reference geometry.
    clim_days = CLIMATE_YEARS * 365
    model_rng = _rng(spec, continent, "model")
    clim_q = net.accumulate(lateral_inflow(net, geo, clim, 0, clim_days, model_rng))
    set_reference_geometry(geo, clim_q)
    model_bias = np.exp(MODEL_LOG_ERROR * model_rng.standard_normal(nr))
    model_q = clim_q * model_bias[:, None]

    # The truth: gauge history, then the observation period.
    total = GAUGE_HISTORY_DAYS + days
    lateral = lateral_inflow(
        net, geo, clim, day0 - GAUGE_HISTORY_DAYS, total, _rng(spec, continent, "truth")
    )
    q_all = net.accumulate(lateral)
    q, q_lateral = q_all[:, GAUGE_HISTORY_DAYS:], lateral[:, GAUGE_HISTORY_DAYS:]
    width, slope, area = hydraulics(q, geo)
    wse = geo.bed[:, None] + area / width
    series = {
        "q": q,
        "width": width,
        "wse": wse,
        "slope": slope,
        "d_x_area": area - geo.a0[:, None],
    }

    faulty = choose_faulty(nr, _faulty_count(spec, continent), _rng(spec, continent, "faulty"))
    gauge_rng = _rng(spec, continent, "gauges")
    gauged = choose_gauged(nr, float(spec.get("gauge_fraction", 0.25)), faulty, gauge_rng)

    sword = sword_of(net, geo)
    sword_path = input_dir / "sword" / contract.sword_name(continent)
    ncio.write_sword(sword_path, sword)

    model = model_priors(model_q, 0)
    reach_priors, node_priors = gbpriors(
        geo, model, model_q, clim_q, _rng(spec, continent, "priors")
    )
    sos = ncio.Sos(
        reach_id=net.reach_id,
        x=geo.x,
        y=geo.y,
        node_id=geo.node_id,
        node_reach_id=net.reach_id[geo.node_reach],
        model=model,
        gbpriors_reach=reach_priors,
        gbpriors_node=node_priors,
        attrs={"version": "previous", "continent": continent, "source": "confluence synthetic"},
    )
    sos_path = input_dir / "sos" / "previous" / contract.sos_priors_name(continent)
    ncio.write_sos(sos_path, sos)

    records = gauge_records(
        continent, net, gauged, q_all, day0 - GAUGE_HISTORY_DAYS, noise, gauge_rng
    )
    gauge_path = input_dir / "gage" / ncio.gauge_file_name(continent)
    ncio.write_gauges(gauge_path, records)

    granules: list[Path] = []
    n_obs = np.zeros(nr, np.int64)
    raw_dir = input_dir / "swot_raw" / continent
    for stale in raw_dir.glob("SWOT_L2_HR_RiverSP_*.nc"):
        stale.unlink()  # granules of an earlier run (longer period, other seed) must go
    if spec.get("observations", True):
        sched = schedule(net, geo, day0, days, faulty, _rng(spec, continent, "orbit"))
        reach_obs, node_obs = observe(
            net,
            geo,
            sched,
            series,
            noise,
            _rng(spec, continent, "flags"),
            _rng(spec, continent, "noise"),
        )
        granules = write_granules(raw_dir, net, sched, reach_obs, node_obs)
        n_obs = np.bincount(sched.reach, minlength=nr)

    truth = Truth(
        reach_id=net.reach_id,
        reach_dn=net.reach_dn,
        time=(day0 + np.arange(days)) * ncio.SECONDS_PER_DAY,
        q=q,
        q_lateral=q_lateral,
        width=width,
        wse=wse,
        slope=slope,
        d_x_area=series["d_x_area"],
        n=geo.n,
        A0=geo.a0,
        qc=geo.qc,
        wc=geo.wc,
        b=geo.b,
        slope_ref=geo.slope,
        slope_exponent=geo.slope_exp,
        bed_elevation=geo.bed,
        wse_ref=wse_ref(geo),
        facc=geo.facc,
        reach_length=net.length,
        faulty=faulty,
        gauged=gauged,
    )
    truth_path = Path(truth_dir) / truth_name(continent)
    write_truth(truth_path, truth)
    return {
        "continent": continent,
        "reaches": nr,
        "nodes": int(geo.n_nodes.sum()),
        "gauges": int(gauged.sum()),
        "faulty_reaches": [int(x) for x in net.reach_id[faulty]],
        "granules": len(granules),
        "observations": int(n_obs.sum()),
        "observations_per_reach": [int(n_obs.min()), int(n_obs.max())],
        "files": {
            "sword": str(sword_path),
            "sos_previous": str(sos_path),
            "gauges": str(gauge_path),
            "swot_raw": str(input_dir / "swot_raw" / continent),
            "truth": str(truth_path),
        },
        "seconds": round(timer.perf_counter() - started, 3),
    }


def cli(args) -> int:
    """``confluence synthesize --continent c --input-dir D --truth-dir T``, with the domain
    from ``--domain`` (the config's domain section as JSON, as the workflow passes it) or
    from ``--configfile`` (default config/config.yaml)."""
    try:
        spec = _spec_from_args(args)
        if spec.get("kind", "synthetic") != "synthetic":
            raise ValueError(
                f"domain.kind is {spec.get('kind')!r}: only a synthetic domain can be "
                "synthesized; set domain.kind: synthetic"
            )
        summary = generate(spec, args.continent, args.input_dir, args.truth_dir)
    except ValueError as err:
        print(f"confluence synthesize: {err}", file=sys.stderr)
        return 2
    print(
        f"{summary['continent']}: {summary['reaches']} reaches, {summary['nodes']} nodes, "
        f"{summary['gauges']} gauges, {summary['granules']} granules, "
        f"{summary['observations']} observations ({summary['observations_per_reach'][0]}-"
        f"{summary['observations_per_reach'][1]} per reach), faulty "
        f"{summary['faulty_reaches'] or 'none'}, {summary['seconds']} s"
    )
    return 0


def _spec_from_args(args) -> dict:
    text = getattr(args, "domain", None)
    if text:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--domain is not valid JSON: {err}") from None
        if not isinstance(spec, dict):
            raise ValueError("--domain must be a JSON object (the config's domain section)")
        return spec
    from confluence import config as config_module

    return config_module.load(args.configfile)["domain"]
