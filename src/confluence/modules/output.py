"""output (continent): gather every module's results of one continent into the SoS results file.

Reads R/input/W (a continent.json item, e.g. {"na": [7, 8, 9]}), the continent's SoS priors
(R/input/sos/) and SWOT files (the time axis), R/flpe/{algo}/, R/moi/,
R/diagnostics/{prediagnostics, postdiagnostics/reach, postdiagnostics/basin}/, R/offline/
and R/validation/stats/. Writes R/output/sos/{c}_sword_v16_SOS_results.nc: dims num_reaches
(every SoS reach) and nt (the longest observation series); group ``reaches`` (reach_id, x,
y, time, n_time) and one group per module with the results that exist (fill elsewhere):
``prediagnostics`` (valid, reasons), one per FLPE algorithm (q, q_u, parameters),
``postdiagnostics_flpe/{algo}``, ``moi/{algo}``, ``postdiagnostics_moi/{algo}``,
``offline/{algo|consensus}``, ``validation/{flpe|moi|offline}/{algo}`` (metrics; with
``validation/gauged`` and ``validation/cal``). Extra argument: the run type.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import ItemError
from confluence.modules import _common
from confluence.science.validation import METRICS

RUN_TYPES = ("constrained", "unconstrained")


class _Groups:
    """Arrays over (reach,) or (reach, time) per group path, filled as results are read."""

    def __init__(self, times: np.ndarray):
        self.times = times
        self.nr, self.nt = times.shape
        self.vars: dict[tuple[str, ...], dict[str, tuple[np.ndarray, bool]]] = {}
        self.attrs: dict[tuple[str, ...], dict] = {}

    def _array(self, group, name, shape, integer) -> np.ndarray:
        variables = self.vars.setdefault(tuple(group), {})
        if name not in variables:
            variables[name] = (np.full(shape, np.nan), integer)
        return variables[name][0]

    def series(self, group, name, row: int, time, values, integer=False) -> None:
        target = self._array(group, name, (self.nr, self.nt), integer)
        target[row] = _common.on_axis(self.times[row], time, values)

    def scalar(self, group, name, row: int, value, integer=False) -> None:
        self._array(group, name, (self.nr,), integer)[row] = value

    def write(self, ds) -> None:
        for path in sorted(self.vars):
            group = ds
            for part in path:
                group = group.groups[part] if part in group.groups else group.createGroup(part)
            group.setncatts(self.attrs.get(path, {}))
            for name, (values, integer) in self.vars[path].items():
                dims = ("num_reaches", "nt") if values.ndim == 2 else ("num_reaches",)
                if integer:
                    ncio.put_int(group, name, values, dims)
                else:
                    ncio.put_float(group, name, values, dims)


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _per_reach_files(folder: Path, reach_ids, suffix: str):
    """(row, reach, path) of the reaches that have ``{rid}{suffix}`` in ``folder``."""
    names = _listing(folder)
    for row, rid in enumerate(reach_ids):
        name = f"{int(rid)}{suffix}"
        if name in names:
            yield row, int(rid), folder / name


def _flpe(out: _Groups, flpe_dir: Path, rows: dict[int, int]) -> None:
    for algorithm in _common.algorithm_dirs(flpe_dir):
        by_reach = _common.results_by_reach(flpe_dir / algorithm, algorithm)
        # The flpe file system holds every continent: read only this one's files.
        files = {path for rid, path in by_reach.items() if rid in rows}
        for path in sorted(files):
            for res in ncio.read_flpe(path):
                row = rows.get(int(res.reach_id))
                if row is None:
                    continue
                _common.checked(res, path)
                out.attrs[(algorithm,)] = {"flow_law": res.flow_law}
                out.series([algorithm], "q", row, res.time, res.q)
                out.series([algorithm], "q_u", row, res.time, res.q_u)
                for name, value in res.params.items():
                    out.scalar([algorithm], name, row, value)


def _diagnostics(out: _Groups, folder: Path, module: str, suffix: str, reach_ids) -> None:
    for row, _, path in _per_reach_files(folder, reach_ids, suffix):
        diag = _common.read_diagnostics(path)
        for algorithm, a in diag.algorithms.items():
            group = [module, algorithm]
            out.series(group, "realism", row, diag.time, a.realism.astype(float), integer=True)
            out.scalar(group, "realism_flag", row, a.realism_flag, integer=True)
            out.scalar(group, "unrealistic_fraction", row, a.unrealistic_fraction)
            out.scalar(group, "relative_change", row, a.relative_change)
            out.scalar(group, "stability_flag", row, a.stability_flag, integer=True)


def _gather(root: Path, out: _Groups, reach_ids) -> None:
    rows = {int(r): i for i, r in enumerate(reach_ids)}
    diagnostics = root / "diagnostics"
    for row, _, path in _per_reach_files(
        diagnostics / "prediagnostics", reach_ids, "_prediagnostics.nc"
    ):
        pre = _common.read_prediagnostics(path)
        group = ["prediagnostics"]
        out.series(group, "valid", row, pre.time, pre.valid.astype(float), integer=True)
        out.series(group, "reasons", row, pre.time, pre.reasons.astype(float), integer=True)
    _flpe(out, root / _common.FLPE, rows)
    _diagnostics(
        out,
        diagnostics / "postdiagnostics" / "reach",
        "postdiagnostics_flpe",
        "_flpe_diag.nc",
        reach_ids,
    )
    for row, _, path in _per_reach_files(root / _common.MOI, reach_ids, "_integrator.nc"):
        for algorithm, res in _common.read_integrator(path).items():
            group = ["moi", algorithm]
            out.attrs[tuple(group)] = {"flow_law": res.flow_law}
            out.series(group, "q", row, res.time, res.q)
            out.series(group, "q_u", row, res.time, res.q_u)
            for name, value in res.params.items():
                out.scalar(group, name, row, value)
            out.scalar(group, "qbar_reachScale", row, res.qbar_reach)
            out.scalar(group, "qbar_basinScale", row, res.qbar_basin)
            out.scalar(group, "refit_ok", row, int(res.refit_ok), integer=True)
    _diagnostics(
        out,
        diagnostics / "postdiagnostics" / "basin",
        "postdiagnostics_moi",
        "_moi_diag.nc",
        reach_ids,
    )
    for row, _, path in _per_reach_files(root / _common.OFFLINE, reach_ids, "_offline.nc"):
        time, series = _common.read_offline(path)
        for name, s in series.items():
            out.series(["offline", name], "q", row, time, s.q)
            out.series(["offline", name], "q_u", row, time, s.q_u)
    stats_dir = root / "validation" / "stats"
    for row, _, path in _per_reach_files(stats_dir, reach_ids, "_validation.nc"):
        stats = _common.read_validation(path)
        out.scalar(["validation"], "gauged", row, int(stats.attrs.get("gauged", 0)), integer=True)
        out.scalar(["validation"], "cal", row, int(stats.attrs.get("cal", 0)), integer=True)
        for k, label in enumerate(stats.labels):
            group = ["validation", *label.split("/")]
            for name in METRICS:
                out.scalar(group, name, row, stats.metrics[name][k], integer=name == "n")


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    root = Path(root)
    path = _common.worklist_path(root, worklist)
    item = contract.read_worklist_item(path, index)
    if not (isinstance(item, dict) and len(item) == 1 and next(iter(item)) in contract.CONTINENTS):
        raise ItemError(
            f"{path} item {index}: expected one continent code -> digits, e.g. "
            f'{{"na": [7, 8, 9]}}, got {item!r}'
        )
    (continent,) = item
    run_type = extra[0] if extra else "unknown"
    if extra and (len(extra) > 1 or run_type not in RUN_TYPES):
        raise ItemError(
            f"output: arguments {extra!r}: expected one run type, {' or '.join(RUN_TYPES)}"
        )
    try:
        sos = ncio.read_sos(root / _common.INPUT / "sos" / contract.sos_priors_name(continent))
        reach_ids = np.asarray(sos.reach_id, np.int64)
        series = {
            int(rid): ncio.read_swot(p).time
            for _, rid, p in _per_reach_files(root / _common.INPUT / "swot", reach_ids, "_SWOT.nc")
        }
        nt = max([len(t) for t in series.values()], default=1) or 1
        times = np.full((len(reach_ids), nt), np.nan)
        n_time = np.zeros(len(reach_ids), np.int64)
        for row, rid in enumerate(reach_ids):
            t = series.get(int(rid), ())
            times[row, : len(t)], n_time[row] = t, len(t)
        out = _Groups(times)
        _gather(root, out, reach_ids)
    except ItemError as err:
        raise type(err)(f"continent {continent}: {err}") from None
    target = root / _common.OUTPUT / "sos" / contract.sos_results_name(continent)
    attrs = {
        "title": "SWORD of Science (SoS) results",
        "continent": continent,
        "run_type": run_type,
        "modules": " ".join(sorted({p[0] for p in out.vars})),
    }
    with ncio.create_dataset(target, **attrs) as ds:
        ds.createDimension("num_reaches", len(reach_ids))
        ds.createDimension("nt", nt)
        reaches = ds.createGroup("reaches")
        reaches.createVariable("reach_id", "i8", ("num_reaches",))[...] = reach_ids
        ncio.put_float(reaches, "x", sos.x, ("num_reaches",), units="degrees_east")
        ncio.put_float(reaches, "y", sos.y, ("num_reaches",), units="degrees_north")
        ncio.put_float(reaches, "time", times, ("num_reaches", "nt"), units=ncio.TIME_UNITS)
        ncio.put_int(reaches, "n_time", n_time, ("num_reaches",))
        out.write(ds)
