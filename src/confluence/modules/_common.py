"""Shared helpers of the downstream module wrappers (prediagnostics, postdiagnostics, MOI,
offline, validation, output): work-list items, input discovery, and the layouts of the files
these modules write (which ncio does not cover).

Mount layout under the root R (see the module table of the architecture): R/input holds the
work lists and input files, R/output is where a module writes, and the upstream file systems
sit at R/flpe, R/moi, R/offline, R/diagnostics, R/validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import ItemError, UpstreamMissing
from confluence.science import diagnostics
from confluence.science.flowlaws import PARAMETERS
from confluence.science.moi import IntegratedResult
from confluence.science.types import FlpeResult
from confluence.science.validation import METRICS

INPUT, OUTPUT = "input", "output"
FLPE, MOI, OFFLINE = "flpe", "moi", "offline"


# --------------------------------------------------------------------------------------------
# Work-list items and input paths


def worklist_path(root: Path, worklist: str) -> Path:
    """Work lists are named relative to the input mount."""
    return Path(root) / INPUT / worklist


def item_of(root: Path, worklist: str, index: int, keys: tuple[str, ...]):
    """The work-list item at ``index``, checked to be an object with ``keys``."""
    path = worklist_path(root, worklist)
    item = contract.read_worklist_item(path, index)
    if not isinstance(item, dict) or any(k not in item for k in keys):
        raise ItemError(
            f"{path} item {index}: expected an object with keys {', '.join(keys)}, got {item!r}"
        )
    return item


def reach_item(root: Path, worklist: str, index: int) -> dict:
    return item_of(root, worklist, index, ("reach_id",))


def input_file(root: Path, folder: str, name: str) -> Path:
    return Path(root) / INPUT / folder / name


def swot_path(root: Path, item: dict) -> Path:
    return input_file(root, "swot", item.get("swot") or contract.swot_name(item["reach_id"]))


def sos_path(root: Path, item: dict, reach_id: int | None = None) -> Path:
    rid = reach_id if reach_id is not None else item["reach_id"]
    name = item.get("sos") or contract.sos_priors_name(contract.continent_of(rid))
    return input_file(root, "sos", name)


def sword_path(root: Path, item: dict, reach_id: int) -> Path:
    name = item.get("sword") or contract.sword_name(contract.continent_of(reach_id))
    return input_file(root, "sword", name)


def sets_of(root: Path, worklist: str) -> list | None:
    """The chunk's sets.json (MetroMan's inversion sets) if it sits beside the work list."""
    path = worklist_path(root, worklist).with_name("sets.json")
    if not path.is_file():
        return None
    return contract.read_worklist(path)


@contextmanager
def about_reach(reach_id: int) -> Iterator[None]:
    """Make every item error name the reach (keeping UpstreamMissing apart from failures)."""
    try:
        yield
    except ItemError as err:
        message = str(err)
        if f"reach {int(reach_id)}" in message:
            raise
        raise type(err)(f"reach {int(reach_id)}: {message}") from None


# --------------------------------------------------------------------------------------------
# Upstream results


def algorithm_dirs(flpe_dir: Path) -> list[str]:
    """The FLPE algorithms that ran: one folder each under R/flpe."""
    flpe_dir = Path(flpe_dir)
    if not flpe_dir.is_dir():
        return []
    return sorted(p.name for p in flpe_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def flpe_results(flpe_dir: Path, reach_id: int, sets: list | None) -> dict[str, FlpeResult]:
    """Every algorithm's result for the reach; algorithms without one are left out.

    A result file that exists but cannot be read fails the item (ItemError naming the reach).
    """
    results = {}
    for algorithm in algorithm_dirs(flpe_dir):
        try:
            with about_reach(reach_id):
                results[algorithm] = checked(
                    ncio.find_flpe_result(flpe_dir, algorithm, reach_id, sets), flpe_dir
                )
        except UpstreamMissing:
            continue
    return results


def checked(result: FlpeResult, where: Path) -> FlpeResult:
    """The result, if its flow law is known and it has that law's parameters."""
    names = PARAMETERS.get(result.flow_law)
    if names is None:
        raise ItemError(
            f"reach {result.reach_id}: the {result.algorithm} result under {where} has flow law "
            f"{result.flow_law!r}; known: {', '.join(PARAMETERS)}"
        )
    missing = [n for n in names if n not in result.params]
    if missing:
        raise ItemError(
            f"reach {result.reach_id}: the {result.algorithm} result under {where} lacks the "
            f"{result.flow_law} parameters {', '.join(missing)}; rerun {result.algorithm}"
        )
    return result


def results_by_reach(folder: Path, algorithm: str) -> dict[int, Path]:
    """Reach -> result file of one algorithm folder, from the file names ``{ids}_{algo}.nc``."""
    suffix = f"_{algorithm}.nc"
    found = {}
    if not Path(folder).is_dir():
        return found
    for path in Path(folder).iterdir():
        if not path.name.endswith(suffix) or path.name.startswith("."):
            continue
        for rid in path.name[: -len(suffix)].split("-"):
            if rid.isdigit():
                found[int(rid)] = path
    return found


def on_axis(axis, time, values) -> np.ndarray:
    """``values`` given at ``time``, placed on ``axis`` (NaN where the axis has no match)."""
    axis, time = np.asarray(axis, float), np.asarray(time, float)
    values = np.asarray(values, float)
    out = np.full(axis.shape, np.nan)
    if axis.size == 0 or time.size == 0:
        return out
    if axis.shape == time.shape and np.array_equal(axis, time, equal_nan=True):
        return values.copy()
    order = np.argsort(axis, kind="stable")
    pos = np.clip(np.searchsorted(axis[order], time), 0, axis.size - 1)
    hit = axis[order][pos] == time
    out[order[pos[hit]]] = values[hit]
    return out


def aligned(result: FlpeResult, axis) -> FlpeResult:
    """The result re-indexed on the observation times ``axis``."""
    return FlpeResult(
        algorithm=result.algorithm,
        flow_law=result.flow_law,
        reach_id=result.reach_id,
        time=np.asarray(axis, float),
        q=on_axis(axis, result.time, result.q),
        q_u=on_axis(axis, result.time, result.q_u),
        params=dict(result.params),
    )


# --------------------------------------------------------------------------------------------
# File layouts written by these modules


def _put_scalar(group, name: str, value, dtype="f8") -> None:
    if dtype == "f8":
        var = group.createVariable(name, "f8", (), fill_value=contract.FLOAT_FILL)
        var[...] = float(value) if np.isfinite(value) else contract.FLOAT_FILL
    else:
        group.createVariable(name, dtype, ())[...] = value


def _get_scalar(group, name: str) -> float:
    return float(ncio.get_float(group, name))


def _put_int8(group, name: str, values, dims, **attrs) -> None:
    var = group.createVariable(name, "i1", dims)
    var[...] = np.asarray(values, np.int8)
    var.setncatts(attrs)


def _base(ds, reach_id: int, time) -> None:
    ds.createDimension("nt", len(time))
    ds.createVariable("reach_id", "i8", ())[...] = int(reach_id)
    ncio.put_float(ds, "time", time, ("nt",), units=ncio.TIME_UNITS)


def _read_base(ds) -> tuple[int, np.ndarray]:
    return int(ds.variables["reach_id"][...]), ncio.get_float(ds, "time")


# Prediagnostics: {rid}_prediagnostics.nc


@dataclass
class Prediagnostics:
    reach_id: int
    time: np.ndarray
    valid: np.ndarray  # bool
    reasons: np.ndarray  # int bitmask (science.diagnostics.REASON_BITS)


def write_prediagnostics(path: Path, pre: Prediagnostics, masks, meanings: str, **attrs) -> None:
    with ncio.create_dataset(path, title="Prediagnostics flags", **attrs) as ds:
        _base(ds, pre.reach_id, pre.time)
        _put_int8(
            ds,
            "valid",
            pre.valid,
            ("nt",),
            flag_values=np.array([0, 1], np.int8),
            flag_meanings="rejected kept",
            long_name="1 = the observation passed the quality filter",
        )
        var = ds.createVariable("reasons", "i4", ("nt",))
        var[...] = np.asarray(pre.reasons, np.int32)
        var.setncatts(
            {
                "flag_masks": np.asarray(masks, np.int32),
                "flag_meanings": meanings,
                "long_name": "why the observation was rejected (bitmask; 0 = kept)",
            }
        )


def read_prediagnostics(path: Path) -> Prediagnostics:
    with ncio.open_dataset(path, "prediagnostics") as ds:
        rid, time = _read_base(ds)
        return Prediagnostics(
            reach_id=rid,
            time=time,
            valid=np.asarray(ds.variables["valid"][...]) == 1,
            reasons=np.asarray(ds.variables["reasons"][...], np.int64),
        )


# Postdiagnostics: {rid}_flpe_diag.nc and {rid}_moi_diag.nc


@dataclass
class AlgorithmDiagnostics:
    realism: np.ndarray  # bool over nt: Q +- u entirely outside [min_q, max_q]
    relative_change: float  # against the previous run (NaN: not assessed)
    stability_flag: int  # 1 unstable, 0 stable, -1 not assessed
    q_mean: float

    @property
    def realism_flag(self) -> int:
        return int(self.realism.any())

    @property
    def unrealistic_fraction(self) -> float:
        return float(self.realism.mean()) if self.realism.size else np.nan


@dataclass
class Diagnostics:
    reach_id: int
    time: np.ndarray
    algorithms: dict[str, AlgorithmDiagnostics] = field(default_factory=dict)


def write_diagnostics(path: Path, diag: Diagnostics, **attrs) -> None:
    with ncio.create_dataset(path, title="Postdiagnostics flags", **attrs) as ds:
        _base(ds, diag.reach_id, diag.time)
        ds.setncattr("algorithms", " ".join(diag.algorithms))
        for name, a in diag.algorithms.items():
            group = ds.createGroup(name)
            _put_int8(
                group, "realism", a.realism, ("nt",), long_name="1 = Q +- u outside SoS range"
            )
            _put_scalar(group, "realism_flag", np.int8(a.realism_flag), "i1")
            _put_scalar(group, "unrealistic_fraction", a.unrealistic_fraction)
            _put_scalar(group, "relative_change", a.relative_change)
            _put_scalar(group, "stability_flag", np.int8(a.stability_flag), "i1")
            _put_scalar(group, "q_mean", a.q_mean)


def read_diagnostics(path: Path) -> Diagnostics:
    with ncio.open_dataset(path, "postdiagnostics") as ds:
        rid, time = _read_base(ds)
        diag = Diagnostics(rid, time)
        for name, group in ds.groups.items():
            diag.algorithms[name] = AlgorithmDiagnostics(
                realism=np.asarray(group.variables["realism"][...]) == 1,
                relative_change=_get_scalar(group, "relative_change"),
                stability_flag=int(group.variables["stability_flag"][...]),
                q_mean=_get_scalar(group, "q_mean"),
            )
        return diag


# MOI: {rid}_integrator.nc


def write_integrator(
    path: Path, reach_id: int, time, results: dict[str, IntegratedResult], **attrs
) -> None:
    with ncio.create_dataset(path, title="MOI integrated discharge", **attrs) as ds:
        _base(ds, reach_id, time)
        ds.setncattr("algorithms", " ".join(results))
        for name, res in results.items():
            group = ds.createGroup(name)
            group.setncatts({"flow_law": res.flow_law, "refit_ok": int(res.refit_ok)})
            ncio.put_float(group, "q", res.q, ("nt",), units="m^3/s")
            ncio.put_float(group, "q_u", res.q_u, ("nt",), units="m^3/s")
            for pname, value in res.params.items():
                _put_scalar(group, pname, value)
            for pname, value in res.flpe_params.items():
                _put_scalar(group, f"flpe_{pname}", value)
            _put_scalar(group, "qbar_reachScale", res.qbar_reach)
            _put_scalar(group, "qbar_basinScale", res.qbar_basin)


def read_integrator(path: Path) -> dict[str, IntegratedResult]:
    with ncio.open_dataset(path, "MOI integrator") as ds:
        rid, time = _read_base(ds)
        out = {}
        for name, group in ds.groups.items():
            flow_law = str(group.getncattr("flow_law"))
            out[name] = IntegratedResult(
                algorithm=name,
                flow_law=flow_law,
                reach_id=rid,
                time=time,
                q=ncio.get_float(group, "q"),
                q_u=ncio.get_float(group, "q_u"),
                params={p: _get_scalar(group, p) for p in PARAMETERS[flow_law]},
                qbar_reach=_get_scalar(group, "qbar_reachScale"),
                qbar_basin=_get_scalar(group, "qbar_basinScale"),
                refit_ok=bool(int(group.getncattr("refit_ok"))),
                flpe_params={
                    p: _get_scalar(group, f"flpe_{p}")
                    for p in PARAMETERS[flow_law]
                    if f"flpe_{p}" in group.variables
                },
            )
        return out


# Offline: {rid}_offline.nc

CONSENSUS = "consensus"


@dataclass
class OfflineSeries:
    q: np.ndarray
    q_u: np.ndarray
    flow_law: str = ""
    params: dict[str, float] = field(default_factory=dict)
    source: str = ""  # "moi" or "flpe": where the parameters came from


def write_offline(
    path: Path, reach_id: int, time, series: dict[str, OfflineSeries], **attrs
) -> None:
    with ncio.create_dataset(path, title="Offline discharge", **attrs) as ds:
        _base(ds, reach_id, time)
        ds.setncattr("algorithms", " ".join(series))
        for name, s in series.items():
            group = ds.createGroup(name)
            group.setncatts({"flow_law": s.flow_law, "parameter_source": s.source})
            ncio.put_float(group, "q", s.q, ("nt",), units="m^3/s")
            ncio.put_float(group, "q_u", s.q_u, ("nt",), units="m^3/s")
            for pname, value in s.params.items():
                _put_scalar(group, pname, value)


def read_offline(path: Path) -> tuple[np.ndarray, dict[str, OfflineSeries]]:
    with ncio.open_dataset(path, "offline") as ds:
        _, time = _read_base(ds)
        series = {}
        for name, group in ds.groups.items():
            params = {p: _get_scalar(group, p) for p in group.variables if p not in ("q", "q_u")}
            series[name] = OfflineSeries(
                q=ncio.get_float(group, "q"),
                q_u=ncio.get_float(group, "q_u"),
                flow_law=str(group.getncattr("flow_law")),
                params=params,
                source=str(group.getncattr("parameter_source")),
            )
        return time, series


# Validation: stats/{rid}_validation.nc


@dataclass
class ValidationStats:
    reach_id: int
    labels: list[str]  # "flpe/geobam", "moi/geobam", "offline/consensus", ...
    metrics: dict[str, np.ndarray]  # metric -> values over labels
    attrs: dict = field(default_factory=dict)


def write_validation(path: Path, stats: ValidationStats) -> None:
    with ncio.create_dataset(path, title="Validation statistics", **stats.attrs) as ds:
        ds.createDimension("nv", len(stats.labels))
        ds.createVariable("reach_id", "i8", ())[...] = int(stats.reach_id)
        ncio.put_str(ds, "label", stats.labels, ("nv",))
        for name in METRICS:
            if name == "n":
                ncio.put_int(ds, "n", stats.metrics["n"], ("nv",))
            else:
                ncio.put_float(ds, name, stats.metrics[name], ("nv",))


def read_validation(path: Path) -> ValidationStats:
    with ncio.open_dataset(path, "validation statistics") as ds:
        return ValidationStats(
            reach_id=int(ds.variables["reach_id"][...]),
            labels=ncio.get_str(ds, "label"),
            metrics={
                name: (ncio.get_int(ds, name) if name == "n" else ncio.get_float(ds, name))
                for name in METRICS
            },
            attrs={k: ds.getncattr(k) for k in ds.ncattrs()},
        )


# --------------------------------------------------------------------------------------------
# Shared steps


def options(extra: list[str], known: tuple[str, ...], module: str) -> dict[str, str]:
    """``key=value`` arguments after the work list; anything else is a configuration error."""
    found = {}
    for arg in extra:
        key, sep, value = arg.partition("=")
        if not sep or key not in known:
            raise ItemError(
                f"{module}: unknown argument {arg!r}; expected "
                + ", ".join(f"{k}=..." for k in known)
            )
        found[key] = value
    return found


def resolve(root: Path, path: str) -> Path:
    """A path argument: absolute, or relative to the mount root."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(root) / candidate


def tolerance_option(opts: dict[str, str], module: str) -> float:
    """The ``tolerance=`` argument (relative change counted as unstable), default 0.25."""
    value = opts.get("tolerance", str(diagnostics.STABILITY_TOLERANCE))
    try:
        tolerance = float(value)
    except ValueError:
        tolerance = -1.0
    if not tolerance > 0:
        raise ItemError(f"{module}: tolerance={value} is not a positive number (e.g. 0.25)")
    return tolerance


def assess(
    time,
    q,
    q_u,
    min_q: float,
    max_q: float,
    previous: tuple[np.ndarray, np.ndarray] | None,
    tolerance: float = diagnostics.STABILITY_TOLERANCE,
) -> AlgorithmDiagnostics:
    """Realism against the SoS range and stability against a previous run's (time, q)."""
    q = np.asarray(q, float)
    change = np.nan if previous is None else diagnostics.relative_change(time, q, *previous)
    finite = q[np.isfinite(q)]
    return AlgorithmDiagnostics(
        realism=diagnostics.realism_flags(q, q_u, min_q, max_q),
        relative_change=change,
        stability_flag=diagnostics.stability_flag(change, tolerance),
        q_mean=float(finite.mean()) if finite.size else np.nan,
    )
