"""validation (reach): skill of every discharge estimate of a reach against its gauge.

Reads R/input/W, the SoS (gauge groups; global attribute run_type), R/flpe/{algo}/,
R/moi/{rid}_integrator.nc and R/offline/{rid}_offline.nc (whichever exist). Writes
R/output/stats/{rid}_validation.nc for every reach: one row per estimate ("flpe/geobam",
"moi/geobam", "offline/geobam", ..., "offline/consensus") with NSE, KGE, RMSE, nRMSE, nBIAS,
r, R^2 and n (n = 0 for an ungauged reach), and, only for gauged reaches, a hydrograph
R/output/figs/{rid}_{algo}.png per algorithm (plus {rid}_consensus.png). A gauge flagged CAL
in a constrained run was used to build the priors: its statistics are calibration, not
validation, and the file says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import UpstreamMissing
from confluence.modules import _common
from confluence.science import validation

#: Days of gauge record shown on each side of the observation period in the hydrographs.
FIGURE_MARGIN_DAYS = 30


def _series(root: Path, worklist: str, reach_id: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (time, q) of every estimate of the reach that exists."""
    series = {}
    flpe = _common.flpe_results(root / _common.FLPE, reach_id, _common.sets_of(root, worklist))
    for algorithm, res in flpe.items():
        series[f"flpe/{algorithm}"] = (res.time, res.q)
    try:
        integrated = _common.read_integrator(root / _common.MOI / f"{reach_id}_integrator.nc")
    except UpstreamMissing:
        integrated = {}
    for algorithm, res in integrated.items():
        series[f"moi/{algorithm}"] = (res.time, res.q)
    try:
        time, offline = _common.read_offline(root / _common.OFFLINE / f"{reach_id}_offline.nc")
    except UpstreamMissing:
        offline = {}
    for name, s in offline.items():
        series[f"offline/{name}"] = (time, s.q)
    return series


def _figure(path: Path, reach_id: int, label: str, series, gauge, kind: str) -> None:
    times = np.concatenate([np.asarray(t, float) for t, _ in series.values()])
    times = times[np.isfinite(times)]
    shown = np.ones(gauge.time.shape, bool)
    if times.size:
        margin = FIGURE_MARGIN_DAYS * validation.SECONDS_PER_DAY
        shown = (gauge.time >= times.min() - margin) & (gauge.time <= times.max() + margin)
    station = " ".join(part for part in (gauge.agency, gauge.station_id) if part)
    title = f"reach {reach_id}, {label}: {station} ({kind} gauge)"
    with contract.atomic_output(path) as tmp:
        validation.plot_hydrograph(tmp, series, (gauge.time[shown], gauge.q[shown]), title)


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    item = _common.reach_item(root, worklist, index)
    reach_id = int(item["reach_id"])
    root = Path(root)
    with _common.about_reach(reach_id):
        series = _series(root, worklist, reach_id)
        if not series:
            raise UpstreamMissing(
                f"reach {reach_id}: no FLPE, MOI or offline result to validate under {root}"
            )
        sos = ncio.read_sos(_common.sos_path(root, item))
        sos.row(reach_id)  # the reach must be in the SoS, gauged or not
        gauge = sos.gauge(reach_id)
        run_type = str(sos.attrs.get("run_type", ""))
        calibration = gauge is not None and gauge.cal and run_type != "unconstrained"
        labels = list(series)
        table = {name: [] for name in validation.METRICS}
        for label in labels:
            if gauge is None:
                stats = validation.metrics([], [])
            else:
                _, sim, obs = validation.match_gauge(*series[label], gauge.time, gauge.q)
                stats = validation.metrics(sim, obs)
            for name in validation.METRICS:
                table[name].append(stats[name])
        kind = "ungauged" if gauge is None else ("calibration" if calibration else "validation")
        attrs = {
            "gauged": int(gauge is not None),
            "gauge_type": kind,
            "cal": int(calibration),
            "run_type": run_type or "unknown",
        }
        if gauge is not None:
            attrs.update(agency=gauge.agency, station_id=gauge.station_id, gauge_index=gauge.index)
        _common.write_validation(
            root / _common.OUTPUT / "stats" / f"{reach_id}_validation.nc",
            _common.ValidationStats(
                reach_id, labels, {k: np.asarray(v) for k, v in table.items()}, attrs
            ),
        )
        if gauge is None:
            return
        groups: dict[str, dict] = {}
        for label, values in series.items():
            stage, name = label.split("/", 1)
            groups.setdefault(name, {})[stage] = values
        for name, per_stage in groups.items():
            path = root / _common.OUTPUT / "figs" / f"{reach_id}_{name}.png"
            _figure(path, reach_id, name, per_stage, gauge, kind)
