"""NetCDF readers and writers of the Confluence file contract, used by every module.

Conventions (the file contract is in shared/docs/confluence-contract.md):

- Readers turn fill values (``contract.FLOAT_FILL`` / ``contract.INT_FILL``) into NaN. Float
  variables come back as float64; quality flags stored as integers also come back as float64
  (NaN = fill); identifiers and counts stay integers.
- A missing file raises ``contract.UpstreamMissing("<path>: ...")``; an unreadable, truncated or
  wrongly laid out file raises ``contract.ItemError("<path>: ...")``.
- Writers go through ``contract.atomic_output``: readers never see half-written files.
- Time is float64 seconds since 2000-01-01 everywhere; gauge dates in the SoS are ordinal day
  numbers (``date.toordinal()``), as in the operational SoS.
- SoS ``model/flow_duration_q`` is [num_reaches, num_probability] with ``model/probability``
  (exceedance percent), as in the operational SoS; the other model variables are per reach.

Layouts: SWOT reach files (``SwotReach``), SWORD (``Sword``), SoS (``Sos``, ``GaugeGroup``),
FLPE results (``write_flpe``/``read_flpe``/``find_flpe_result``), and two layouts of the
synthetic input file system: gauge records ``gage/{c}_gauges.nc`` (``GaugeRecords``) and raw
SWOT granules ``swot_raw/{c}/SWOT_L2_HR_RiverSP_{cycle}_{pass}.nc`` (``Granule``).

netCDF4 is used directly, with automatic masking off (masked arrays are slow), because every
module item opens a few of these files and runs thousands of times.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import netCDF4
import numpy as np

from confluence import contract
from confluence.contract import FLOAT_FILL, INT_FILL, ItemError, UpstreamMissing
from confluence.science.types import FlpeResult, Observations, ReachPrior

#: 2000-01-01 as an ordinal day number, to convert SoS gauge dates to SWOT time.
EPOCH_ORDINAL = dt.date(2000, 1, 1).toordinal()
EPOCH = dt.datetime(2000, 1, 1)
SECONDS_PER_DAY = 86400.0
TIME_UNITS = "seconds since 2000-01-01 00:00:00.000"

#: Reach-level observables of a SWOT file, over ``nt``; floats then integer flags.
SWOT_REACH_FLOATS = (
    "width",
    "width_u",
    "wse",
    "wse_u",
    "slope2",
    "slope2_u",
    "d_x_area",
    "d_x_area_u",
    "dark_frac",
    "obs_frac_n",
    "xtrk_dist",
)
SWOT_REACH_FLAGS = ("reach_q", "ice_clim_f", "ice_dyn_f", "n_good_nod")
SWOT_REACH_VARS = SWOT_REACH_FLOATS + SWOT_REACH_FLAGS
#: Node variables stored as integers (everything else in ``SwotReach.node`` is float64).
SWOT_NODE_FLAGS = frozenset({"node_q", "ice_clim_f", "ice_dyn_f", "n_good_pix"})
#: The node observables the contract requires (``SwotReach.node`` may hold more).
SWOT_NODE_VARS = (
    "time",
    "width",
    "width_u",
    "wse",
    "wse_u",
    "slope2",
    "slope2_u",
    "d_x_area",
    "d_x_area_u",
)

SWORD_REACH_VARS = (
    "reach_id",
    "reach_length",
    "dist_out",
    "wse",
    "width",
    "slope",
    "facc",
    "rch_id_up",
    "rch_id_dn",
    "n_rch_up",
    "n_rch_down",
)
#: SWORD keeps up to four neighbours per direction; 0 marks an empty slot, as in SWORD.
SWORD_NEIGHBOURS = 4

SOS_MODEL_VARS = ("mean_q", "min_q", "max_q", "two_year_return_q", "flow_duration_q")
#: The gbpriors variables that ``Sos.prior`` maps onto ``ReachPrior`` fields.
GBPRIOR_FIELDS = (
    "logQ_sd",
    "logn_hat",
    "logn_sd",
    "logDb_hat",
    "logDb_sd",
    "logWb_hat",
    "logWb_sd",
    "logr_hat",
    "logr_sd",
)

#: Exceptions netCDF4/HDF5 raise for unreadable, truncated or wrongly laid out files.
_READ_ERRORS = (OSError, RuntimeError, KeyError, IndexError, ValueError, TypeError, AttributeError)


# --------------------------------------------------------------------------------------------
# Low-level helpers, public so that modules writing their own layouts share the conventions.


def to_float(values, fill: float = FLOAT_FILL) -> np.ndarray:
    """Stored values as float64 with the fill value (and the integer fill) turned into NaN."""
    data = np.asarray(values)
    if data.dtype.kind in "iu":
        out = data.astype(np.float64)
        out[data == INT_FILL] = np.nan
        return out
    out = np.array(data, dtype=np.float64)
    out[(out == fill) | (out == FLOAT_FILL)] = np.nan
    return out


def get_float(group, name: str) -> np.ndarray:
    var = group.variables[name]
    return to_float(var[...], getattr(var, "_FillValue", FLOAT_FILL))


def get_int(group, name: str) -> np.ndarray:
    return np.asarray(group.variables[name][...], dtype=np.int64)


def _storage(group, dims: tuple[str, ...]) -> dict:
    """Contiguous storage in HDF5-based files: small arrays, no compression, and creating a
    chunked variable costs twice as long (each SWOT file has ~30 variables). HDF5 refuses
    contiguous storage of empty variables."""
    if group.data_model != "NETCDF4":
        return {}
    sizes = [len(_dimension(group, d)) for d in dims]
    return {"contiguous": True} if all(sizes) else {}


def _dimension(group, name: str):
    while name not in group.dimensions and group.parent is not None:
        group = group.parent
    return group.dimensions[name]


def put_float(group, name: str, values, dims: tuple[str, ...], **attrs) -> None:
    """A float64 variable; NaN is written as the contract's float fill value."""
    data = np.asarray(values, dtype=np.float64)
    var = group.createVariable(name, "f8", dims, fill_value=FLOAT_FILL, **_storage(group, dims))
    var[...] = np.where(np.isfinite(data), data, FLOAT_FILL)
    var.setncatts(attrs)


def put_int(group, name: str, values, dims: tuple[str, ...], dtype="i4", **attrs) -> None:
    """An integer variable; NaN (when given floats) is written as the integer fill value."""
    data = np.asarray(values)
    if data.dtype.kind == "f":
        data = np.where(np.isfinite(data), data, INT_FILL).astype(np.int64)
    var = group.createVariable(name, dtype, dims, fill_value=INT_FILL, **_storage(group, dims))
    var[...] = data
    var.setncatts(attrs)


def put_str(group, name: str, values, dims: tuple[str, ...]) -> None:
    var = group.createVariable(name, str, dims)
    var[...] = np.array(list(values), dtype=object).reshape(var.shape)


def get_str(group, name: str) -> list[str]:
    return [str(s) for s in np.asarray(group.variables[name][...]).ravel()]


_REMEDY = "rerun the item that writes it, or replace the file"


def _describe(path: Path, what: str) -> str:
    return f"{path}: unreadable or not in the {what} layout"


@contextmanager
def open_dataset(path, what: str) -> Iterator[netCDF4.Dataset]:
    """Open a contract file for reading, with the contract's error types.

    ``what`` names the layout in messages (e.g. "SWOT reach"). Missing file ->
    UpstreamMissing; unreadable, truncated or wrong layout -> ItemError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UpstreamMissing(
            f"{path}: the {what} file does not exist; the item that writes it failed or "
            "has not run yet"
        )
    try:
        ds = netCDF4.Dataset(path, "r")
    except _READ_ERRORS as err:
        raise ItemError(f"{_describe(path, what)} ({err}); {_REMEDY}") from None
    try:
        ds.set_auto_maskandscale(False)
        yield ds
    except _READ_ERRORS as err:
        detail = f"{type(err).__name__}: {err}"
        raise ItemError(f"{_describe(path, what)} ({detail}); {_REMEDY}") from None
    finally:
        ds.close()


@contextmanager
def create_dataset(path, **attrs) -> Iterator[netCDF4.Dataset]:
    """A new NETCDF4 file written atomically at ``path``, with global attributes."""
    with contract.atomic_output(Path(path)) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            ds.setncatts({k: v for k, v in attrs.items() if v is not None})
            yield ds
        finally:
            ds.close()


def time_to_str(seconds) -> list[str]:
    """SWOT-style UTC time strings ("2023-01-01T12:00:00Z"); "no_data" for NaN."""
    return [
        (EPOCH + dt.timedelta(seconds=float(s))).strftime("%Y-%m-%dT%H:%M:%SZ")
        if np.isfinite(s)
        else "no_data"
        for s in np.asarray(seconds, dtype=float)
    ]


def seconds_from_ordinal(days) -> np.ndarray:
    return (np.asarray(days, dtype=float) - EPOCH_ORDINAL) * SECONDS_PER_DAY


def ordinal_from_seconds(seconds) -> np.ndarray:
    return np.floor(np.asarray(seconds, dtype=float) / SECONDS_PER_DAY) + EPOCH_ORDINAL


# --------------------------------------------------------------------------------------------
# SWOT reach time series: {reach_id}_SWOT.nc


@dataclass
class SwotReach:
    """One reach's SWOT observations (reach group over nt, node group over nx x nt)."""

    reach_id: int
    time: np.ndarray
    time_str: list[str]
    width: np.ndarray
    width_u: np.ndarray
    wse: np.ndarray
    wse_u: np.ndarray
    slope2: np.ndarray
    slope2_u: np.ndarray
    d_x_area: np.ndarray
    d_x_area_u: np.ndarray
    reach_q: np.ndarray
    dark_frac: np.ndarray
    ice_clim_f: np.ndarray
    ice_dyn_f: np.ndarray
    n_good_nod: np.ndarray
    obs_frac_n: np.ndarray
    xtrk_dist: np.ndarray
    node_id: np.ndarray
    node: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nt(self) -> int:
        return len(self.time)

    def observations(self, valid=None) -> Observations:
        """The reach observables for the science functions; ``valid`` masks observations."""
        mask = np.ones(self.nt, bool) if valid is None else np.asarray(valid, bool)
        if mask.shape != (self.nt,):
            raise ItemError(
                f"reach {self.reach_id}: validity mask has shape {mask.shape}, "
                f"expected ({self.nt},)"
            )
        return Observations(
            reach_id=int(self.reach_id),
            time=np.asarray(self.time, float),
            width=np.asarray(self.width, float),
            wse=np.asarray(self.wse, float),
            slope=np.asarray(self.slope2, float),
            dA=np.asarray(self.d_x_area, float),
            width_u=np.asarray(self.width_u, float),
            wse_u=np.asarray(self.wse_u, float),
            slope_u=np.asarray(self.slope2_u, float),
            dA_u=np.asarray(self.d_x_area_u, float),
            valid=mask,
        )


def write_swot(path, swot: SwotReach) -> None:
    """Write ``{reach_id}_SWOT.nc``: dims nt, nx; groups reach and node."""
    nt, nx = swot.nt, len(swot.node_id)
    for name in SWOT_REACH_VARS:
        if np.shape(getattr(swot, name)) != (nt,):
            raise ValueError(
                f"reach {swot.reach_id}: {name} has shape {np.shape(getattr(swot, name))}, "
                f"expected ({nt},)"
            )
    for name, values in swot.node.items():
        if np.shape(values) != (nx, nt):
            raise ValueError(
                f"reach {swot.reach_id}: node {name} has shape {np.shape(values)}, "
                f"expected ({nx}, {nt})"
            )
    with create_dataset(path, title="SWOT reach time series", reach_id=int(swot.reach_id)) as ds:
        ds.createDimension("nt", nt)
        ds.createDimension("nx", nx)
        reach = ds.createGroup("reach")
        reach.createVariable("reach_id", "i8", ())[...] = int(swot.reach_id)
        put_float(reach, "time", swot.time, ("nt",), units=TIME_UNITS)
        put_str(reach, "time_str", swot.time_str, ("nt",))
        for name in SWOT_REACH_FLOATS:
            put_float(reach, name, getattr(swot, name), ("nt",))
        for name in SWOT_REACH_FLAGS:
            put_int(reach, name, getattr(swot, name), ("nt",))
        node = ds.createGroup("node")
        node.createVariable("node_id", "i8", ("nx",))[...] = np.asarray(swot.node_id, np.int64)
        node.createVariable("reach_id", "i8", ("nx",))[...] = np.full(nx, int(swot.reach_id))
        for name, values in swot.node.items():
            if name in SWOT_NODE_FLAGS:
                put_int(node, name, values, ("nx", "nt"))
            else:
                put_float(node, name, values, ("nx", "nt"))


def read_swot(path) -> SwotReach:
    with open_dataset(path, "SWOT reach") as ds:
        reach, node = ds.groups["reach"], ds.groups["node"]
        fields = {name: get_float(reach, name) for name in SWOT_REACH_VARS}
        nodes = {
            name: get_float(node, name)
            for name in node.variables
            if name not in ("node_id", "reach_id")
        }
        return SwotReach(
            reach_id=int(reach.variables["reach_id"][...]),
            time=get_float(reach, "time"),
            time_str=get_str(reach, "time_str"),
            node_id=get_int(node, "node_id"),
            node=nodes,
            **fields,
        )


# --------------------------------------------------------------------------------------------
# SWORD: {continent}_sword_v16.nc


@dataclass
class Sword:
    """A continent's SWORD reaches and nodes (the variables the modules use)."""

    reach_id: np.ndarray
    reach_length: np.ndarray
    dist_out: np.ndarray
    wse: np.ndarray
    width: np.ndarray
    slope: np.ndarray
    facc: np.ndarray
    rch_id_up: np.ndarray  # [4, nr], 0 = no neighbour
    rch_id_dn: np.ndarray  # [4, nr]
    n_rch_up: np.ndarray
    n_rch_down: np.ndarray
    node_id: np.ndarray
    node_reach_id: np.ndarray
    node_dist_out: np.ndarray
    x: np.ndarray | None = None  # reach centre longitude
    y: np.ndarray | None = None  # reach centre latitude
    node_x: np.ndarray | None = None
    node_y: np.ndarray | None = None
    _row: dict[int, int] | None = field(default=None, repr=False, compare=False)

    def row(self, reach_id: int) -> int:
        """Index of a reach in the reach arrays; ItemError if SWORD does not have it."""
        if self._row is None:
            self._row = {int(r): i for i, r in enumerate(self.reach_id)}
        try:
            return self._row[int(reach_id)]
        except KeyError:
            raise ItemError(f"reach {reach_id} is not in SWORD; check the work list") from None

    def upstream(self, reach_id: int) -> list[int]:
        i = self.row(reach_id)
        return [int(r) for r in self.rch_id_up[: int(self.n_rch_up[i]), i]]

    def downstream(self, reach_id: int) -> list[int]:
        i = self.row(reach_id)
        return [int(r) for r in self.rch_id_dn[: int(self.n_rch_down[i]), i]]

    def nodes_of(self, reach_id: int) -> np.ndarray:
        """Node IDs of a reach, in stored order."""
        return self.node_id[self.node_reach_id == int(reach_id)]


def write_sword(path, sword: Sword) -> None:
    nr, nn = len(sword.reach_id), len(sword.node_id)
    with create_dataset(path, title="SWOT River Database (SWORD)", version="v16") as ds:
        reaches = ds.createGroup("reaches")
        reaches.createDimension("num_reaches", nr)
        reaches.createDimension("num_domains", SWORD_NEIGHBOURS)
        r = ("num_reaches",)
        reaches.createVariable("reach_id", "i8", r)[...] = np.asarray(sword.reach_id, np.int64)
        put_float(reaches, "reach_length", sword.reach_length, r, units="m")
        put_float(reaches, "dist_out", sword.dist_out, r, units="m")
        put_float(reaches, "wse", sword.wse, r, units="m")
        put_float(reaches, "width", sword.width, r, units="m")
        put_float(reaches, "slope", sword.slope, r, units="m/km")
        put_float(reaches, "facc", sword.facc, r, units="km^2")
        for name in ("rch_id_up", "rch_id_dn"):
            values = np.asarray(getattr(sword, name), np.int64)
            if values.shape != (SWORD_NEIGHBOURS, nr):
                raise ValueError(f"SWORD {name} has shape {values.shape}, expected (4, {nr})")
            reaches.createVariable(name, "i8", ("num_domains", "num_reaches"))[...] = values
        put_int(reaches, "n_rch_up", sword.n_rch_up, r)
        put_int(reaches, "n_rch_down", sword.n_rch_down, r)
        if sword.x is not None:
            put_float(reaches, "x", sword.x, r, units="degrees_east")
            put_float(reaches, "y", sword.y, r, units="degrees_north")
        nodes = ds.createGroup("nodes")
        nodes.createDimension("num_nodes", nn)
        n = ("num_nodes",)
        nodes.createVariable("node_id", "i8", n)[...] = np.asarray(sword.node_id, np.int64)
        nodes.createVariable("reach_id", "i8", n)[...] = np.asarray(sword.node_reach_id, np.int64)
        put_float(nodes, "dist_out", sword.node_dist_out, n, units="m")
        if sword.node_x is not None:
            put_float(nodes, "x", sword.node_x, n, units="degrees_east")
            put_float(nodes, "y", sword.node_y, n, units="degrees_north")


def read_sword(path) -> Sword:
    with open_dataset(path, "SWORD") as ds:
        reaches, nodes = ds.groups["reaches"], ds.groups["nodes"]
        has_xy = "x" in reaches.variables
        has_node_xy = "x" in nodes.variables
        return Sword(
            reach_id=get_int(reaches, "reach_id"),
            reach_length=get_float(reaches, "reach_length"),
            dist_out=get_float(reaches, "dist_out"),
            wse=get_float(reaches, "wse"),
            width=get_float(reaches, "width"),
            slope=get_float(reaches, "slope"),
            facc=get_float(reaches, "facc"),
            rch_id_up=get_int(reaches, "rch_id_up"),
            rch_id_dn=get_int(reaches, "rch_id_dn"),
            n_rch_up=get_int(reaches, "n_rch_up"),
            n_rch_down=get_int(reaches, "n_rch_down"),
            node_id=get_int(nodes, "node_id"),
            node_reach_id=get_int(nodes, "reach_id"),
            node_dist_out=get_float(nodes, "dist_out"),
            x=get_float(reaches, "x") if has_xy else None,
            y=get_float(reaches, "y") if has_xy else None,
            node_x=get_float(nodes, "x") if has_node_xy else None,
            node_y=get_float(nodes, "y") if has_node_xy else None,
        )


# --------------------------------------------------------------------------------------------
# SoS (SWORD of Science): {continent}_sword_v16_SOS_priors.nc


@dataclass
class Gauge:
    """One gauge's record as the modules use it: valid daily values only."""

    agency: str
    index: int  # row in the agency group
    reach_id: int
    time: np.ndarray  # seconds since 2000-01-01, daily
    q: np.ndarray
    cal: bool  # True: a calibration gauge (constrained runs fit priors to it)
    station_id: str = ""


@dataclass
class GaugeGroup:
    """One agency's gauge group of the SoS: ``{AGENCY}_reach_id``, ``_q``, ``_qt``, ``CAL``."""

    agency: str
    reach_id: np.ndarray  # [ng]
    q: np.ndarray  # [ng, nt] m^3/s, NaN = no record
    qt: np.ndarray  # [ng, nt] ordinal day numbers, NaN = no record
    cal: np.ndarray  # [ng] bool
    station_id: list[str] = field(default_factory=list)
    #: Per-gauge statistics stored as ``{AGENCY}_{name}``: mean_q, min_q, max_q,
    #: two_year_return_q over [ng], flow_duration_q over [ng, num_probability].
    stats: dict[str, np.ndarray] = field(default_factory=dict)

    def gauge(self, index: int) -> Gauge:
        q, qt = self.q[index], self.qt[index]
        keep = np.isfinite(q) & np.isfinite(qt)
        return Gauge(
            agency=self.agency,
            index=int(index),
            reach_id=int(self.reach_id[index]),
            time=seconds_from_ordinal(qt[keep]),
            q=q[keep],
            cal=bool(self.cal[index]),
            station_id=self.station_id[index] if self.station_id else "",
        )


@dataclass
class Sos:
    """A continent's SoS: reaches, nodes, model priors, gbpriors, gauge groups."""

    reach_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    node_id: np.ndarray
    node_reach_id: np.ndarray
    model: dict[str, np.ndarray]  # SOS_MODEL_VARS over reaches
    gbpriors_reach: dict[str, np.ndarray]  # over reaches
    gbpriors_node: dict[str, np.ndarray]  # over nodes
    gauges: dict[str, GaugeGroup] = field(default_factory=dict)  # agency -> group
    attrs: dict[str, str] = field(default_factory=dict)  # global attributes (run_type, ...)
    path: str = ""  # where it was read from, for messages
    _row: dict[int, int] | None = field(default=None, repr=False, compare=False)

    def row(self, reach_id: int) -> int:
        if self._row is None:
            self._row = {int(r): i for i, r in enumerate(self.reach_id)}
        try:
            return self._row[int(reach_id)]
        except KeyError:
            where = self.path or "the SoS"
            raise ItemError(
                f"{where}: reach {reach_id} is not in the SoS; check the work list "
                "against the SoS version"
            ) from None

    def prior(self, reach_id: int) -> ReachPrior:
        """The reach's priors; NaN gbpriors fall back to ReachPrior's defaults."""
        i = self.row(reach_id)
        values = {}
        for name in GBPRIOR_FIELDS:
            column = self.gbpriors_reach.get(name)
            if column is not None and np.isfinite(column[i]):
                values[name] = float(column[i])
        return ReachPrior(
            reach_id=int(reach_id),
            mean_q=float(self.model["mean_q"][i]),
            min_q=float(self.model["min_q"][i]),
            max_q=float(self.model["max_q"][i]),
            **values,
        )

    def gauge(self, reach_id: int) -> Gauge | None:
        """The reach's gauge (calibration gauges first), or None if it has none."""
        found = []
        for group in self.gauges.values():
            for index in np.flatnonzero(group.reach_id == int(reach_id)):
                found.append(group.gauge(int(index)))
        if not found:
            return None
        found.sort(key=lambda g: (not g.cal, -len(g.q)))
        return found[0]


def write_sos(path, sos: Sos) -> None:
    nr, nn = len(sos.reach_id), len(sos.node_id)
    attrs = {"title": "SWORD of Science (SoS)", **sos.attrs}
    with create_dataset(path, **attrs) as ds:
        ds.createDimension("num_reaches", nr)
        ds.createDimension("num_nodes", nn)
        r, n = ("num_reaches",), ("num_nodes",)
        reaches = ds.createGroup("reaches")
        reaches.createVariable("reach_id", "i8", r)[...] = np.asarray(sos.reach_id, np.int64)
        put_float(reaches, "x", sos.x, r, units="degrees_east")
        put_float(reaches, "y", sos.y, r, units="degrees_north")
        nodes = ds.createGroup("nodes")
        nodes.createVariable("node_id", "i8", n)[...] = np.asarray(sos.node_id, np.int64)
        nodes.createVariable("reach_id", "i8", n)[...] = np.asarray(sos.node_reach_id, np.int64)
        model = ds.createGroup("model")
        if "probability" in sos.model:
            ds.createDimension("num_probability", len(sos.model["probability"]))
        for name, values in sos.model.items():
            put_float(model, name, values, _model_dims(name, values, nr), **_model_units(name))
        gbpriors = ds.createGroup("gbpriors")
        for scope, variables, dims in (
            ("reach", sos.gbpriors_reach, r),
            ("node", sos.gbpriors_node, n),
        ):
            group = gbpriors.createGroup(scope)
            for name, values in variables.items():
                put_float(group, name, values, dims)
        for agency, gauges in sos.gauges.items():
            _write_gauge_group(ds, agency, gauges)


def _model_dims(name: str, values, nr: int) -> tuple[str, ...]:
    """Dimensions of a model-group variable: flow-duration curves have a probability axis."""
    if name == "probability":
        return ("num_probability",)
    shape = np.shape(values)
    if len(shape) == 2 and shape[0] == nr:
        return ("num_reaches", "num_probability")
    if shape == (nr,):
        return ("num_reaches",)
    raise ValueError(f"SoS model/{name} has shape {shape}; expected ({nr},) or ({nr}, k)")


def _model_units(name: str) -> dict[str, str]:
    if name == "probability":
        return {"units": "percent", "long_name": "exceedance probability of flow_duration_q"}
    return {"units": "m^3/s"} if name.endswith("_q") else {}


def _write_gauge_group(ds, agency: str, gauges: GaugeGroup) -> None:
    group = ds.createGroup(agency)
    ng, nt = np.shape(gauges.q) if np.ndim(gauges.q) == 2 else (len(gauges.reach_id), 0)
    group.createDimension("num_gauges", ng)
    group.createDimension("num_days", nt)
    g, gt = ("num_gauges",), ("num_gauges", "num_days")
    group.createVariable(f"{agency}_reach_id", "i8", g)[...] = np.asarray(gauges.reach_id, np.int64)
    put_float(group, f"{agency}_q", np.reshape(gauges.q, (ng, nt)), gt, units="m^3/s")
    put_float(
        group, f"{agency}_qt", np.reshape(gauges.qt, (ng, nt)), gt, units="ordinal day number"
    )
    put_int(group, "CAL", np.asarray(gauges.cal, np.int32), g, flag_meanings="1 = calibration")
    if gauges.station_id:
        put_str(group, f"{agency}_id", gauges.station_id, g)
    for name, values in gauges.stats.items():
        values = np.asarray(values, float)
        if values.ndim == 2:
            if "num_probability" not in group.dimensions:
                group.createDimension("num_probability", values.shape[1])
            dims = ("num_gauges", "num_probability")
        else:
            dims = g
        put_float(group, f"{agency}_{name}", values, dims, units="m^3/s")


def read_sos(path) -> Sos:
    with open_dataset(path, "SoS") as ds:
        reaches, nodes = ds.groups["reaches"], ds.groups["nodes"]
        model = ds.groups["model"]
        gbpriors = ds.groups["gbpriors"]
        known = {"reaches", "nodes", "model", "gbpriors"}
        gauges = {}
        for agency, group in ds.groups.items():
            if agency in known or f"{agency}_reach_id" not in group.variables:
                continue
            core = {f"{agency}_{n}" for n in ("reach_id", "q", "qt", "id")} | {"CAL"}
            gauges[agency] = GaugeGroup(
                agency=agency,
                reach_id=get_int(group, f"{agency}_reach_id"),
                q=get_float(group, f"{agency}_q"),
                qt=get_float(group, f"{agency}_qt"),
                cal=get_float(group, "CAL") == 1,
                station_id=get_str(group, f"{agency}_id")
                if f"{agency}_id" in group.variables
                else [],
                stats={
                    name[len(agency) + 1 :]: get_float(group, name)
                    for name in group.variables
                    if name not in core and name.startswith(f"{agency}_")
                },
            )
        return Sos(
            reach_id=get_int(reaches, "reach_id"),
            x=get_float(reaches, "x"),
            y=get_float(reaches, "y"),
            node_id=get_int(nodes, "node_id"),
            node_reach_id=get_int(nodes, "reach_id"),
            model={name: get_float(model, name) for name in model.variables},
            gbpriors_reach={
                name: get_float(gbpriors.groups["reach"], name)
                for name in gbpriors.groups["reach"].variables
            },
            gbpriors_node={
                name: get_float(gbpriors.groups["node"], name)
                for name in gbpriors.groups["node"].variables
            },
            gauges=gauges,
            attrs={k: ds.getncattr(k) for k in ds.ncattrs()},
            path=str(path),
        )


# --------------------------------------------------------------------------------------------
# Gauge records of the input file system: gage/{continent}_gauges.nc (synthetic layout)


@dataclass
class GaugeRecords:
    """Daily gauge records of one continent, as the priors module reads them.

    Layout of ``gage/{c}_gauges.nc``: dims num_gauges, num_days; variables reach_id[ng],
    station_id[ng] (str), agency[ng] (str, e.g. USGS, GRDC), cal[ng] (1 = calibration
    gauge), time[num_days] (seconds since 2000-01-01, one per day) and q[ng, num_days]
    (m^3/s, fill = no record).
    """

    reach_id: np.ndarray
    station_id: list[str]
    agency: list[str]
    cal: np.ndarray  # bool
    time: np.ndarray
    q: np.ndarray


def gauge_file_name(continent: str) -> str:
    """File name of a continent's gauge records under the input file system's gage/."""
    return f"{continent}_gauges.nc"


def write_gauges(path, records: GaugeRecords) -> None:
    ng, nd = np.shape(records.q)
    with create_dataset(path, title="Gauge discharge records") as ds:
        ds.createDimension("num_gauges", ng)
        ds.createDimension("num_days", nd)
        g = ("num_gauges",)
        ds.createVariable("reach_id", "i8", g)[...] = np.asarray(records.reach_id, np.int64)
        put_str(ds, "station_id", records.station_id, g)
        put_str(ds, "agency", records.agency, g)
        put_int(ds, "cal", np.asarray(records.cal, np.int32), g, flag_meanings="1 = calibration")
        put_float(ds, "time", records.time, ("num_days",), units=TIME_UNITS)
        put_float(ds, "q", records.q, ("num_gauges", "num_days"), units="m^3/s")


def read_gauges(path) -> GaugeRecords:
    with open_dataset(path, "gauge records") as ds:
        return GaugeRecords(
            reach_id=get_int(ds, "reach_id"),
            station_id=get_str(ds, "station_id"),
            agency=get_str(ds, "agency"),
            cal=get_float(ds, "cal") == 1,
            time=get_float(ds, "time"),
            q=get_float(ds, "q"),
        )


# --------------------------------------------------------------------------------------------
# Raw SWOT granules: swot_raw/{continent}/SWOT_L2_HR_RiverSP_{cycle:03d}_{pass:03d}.nc

#: Fields of a granule's reach records (columns of ``reach_obs``), in stored order.
GRANULE_REACH_FIELDS = ("time",) + SWOT_REACH_VARS
#: Fields of a granule's node records (columns of ``node_obs``).
GRANULE_NODE_FIELDS = SWOT_NODE_VARS + (
    "node_q",
    "dark_frac",
    "ice_clim_f",
    "ice_dyn_f",
    "xtrk_dist",
)


def granule_name(cycle: int, pass_number: int) -> str:
    return f"SWOT_L2_HR_RiverSP_{int(cycle):03d}_{int(pass_number):03d}.nc"


@dataclass
class Granule:
    """One pass of one cycle: the reach and node records SWOT measured on that pass.

    Stored flat (CDF5, no groups): reach_id[reaches], reach_obs[reaches, reach_field],
    node_id[nodes], node_reach_id[nodes], node_obs[nodes, node_field]; the ``fields``
    attribute of each ``*_obs`` variable names its columns. Records are sorted by reach ID
    (nodes by reach then node ID), so one reach's records are one contiguous block. Packing
    the fields into one array per record type makes a reach's records two reads per
    granule: the input module reads every granule of a continent once per reach.
    """

    cycle: int
    pass_number: int
    reach_id: np.ndarray
    reach: dict[str, np.ndarray]  # GRANULE_REACH_FIELDS over reaches; NaN = fill
    node_id: np.ndarray
    node_reach_id: np.ndarray
    node: dict[str, np.ndarray]  # GRANULE_NODE_FIELDS over nodes


def write_granule(path, granule: Granule) -> None:
    order = np.argsort(granule.reach_id, kind="stable")
    node_order = np.lexsort((granule.node_id, granule.node_reach_id))
    reach_obs = np.column_stack([granule.reach[f] for f in GRANULE_REACH_FIELDS])[order]
    node_obs = np.column_stack([granule.node[f] for f in GRANULE_NODE_FIELDS])[node_order]
    attrs = {
        "title": "SWOT L2 HR RiverSP (synthetic), reach and node records of one pass",
        "cycle_number": int(granule.cycle),
        "pass_number": int(granule.pass_number),
    }
    # CDF5 opens in a fraction of the time of an HDF5-based file; it has no groups.
    with contract.atomic_output(Path(path)) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF3_64BIT_DATA")
        try:
            ds.setncatts(attrs)
            ds.createDimension("reaches", len(order))
            ds.createDimension("reach_field", len(GRANULE_REACH_FIELDS))
            ds.createDimension("nodes", len(node_order))
            ds.createDimension("node_field", len(GRANULE_NODE_FIELDS))
            ds.createVariable("reach_id", "i8", ("reaches",))[...] = granule.reach_id[order]
            put_float(ds, "reach_obs", reach_obs, ("reaches", "reach_field"))
            ds.variables["reach_obs"].fields = " ".join(GRANULE_REACH_FIELDS)
            ds.variables["reach_obs"].time_units = TIME_UNITS
            ds.createVariable("node_id", "i8", ("nodes",))[...] = granule.node_id[node_order]
            ds.createVariable("node_reach_id", "i8", ("nodes",))[...] = granule.node_reach_id[
                node_order
            ]
            put_float(ds, "node_obs", node_obs, ("nodes", "node_field"))
            ds.variables["node_obs"].fields = " ".join(GRANULE_NODE_FIELDS)
        finally:
            ds.close()


def read_granule(path, reach_id: int | None = None) -> Granule:
    """A granule's records, or only those of ``reach_id`` (no records if the pass missed it)."""
    with open_dataset(path, "SWOT RiverSP granule") as ds:
        reach_ids = get_int(ds, "reach_id")
        reach_fields = ds.variables["reach_obs"].fields.split()
        node_fields = ds.variables["node_obs"].fields.split()
        rows = node_rows = slice(None)
        if reach_id is not None:
            lo, hi = np.searchsorted(reach_ids, [int(reach_id), int(reach_id) + 1])
            rows, node_rows = slice(int(lo), int(hi)), slice(0, 0)
            if hi > lo:  # only then is the node index worth reading
                node_reach = get_int(ds, "node_reach_id")
                nlo, nhi = np.searchsorted(node_reach, [int(reach_id), int(reach_id) + 1])
                node_rows = slice(int(nlo), int(nhi))
        reach_obs = _rows(ds, "reach_obs", rows, len(reach_fields))
        node_obs = _rows(ds, "node_obs", node_rows, len(node_fields))
        return Granule(
            cycle=int(ds.getncattr("cycle_number")),
            pass_number=int(ds.getncattr("pass_number")),
            reach_id=reach_ids[rows],
            reach={f: reach_obs[:, i] for i, f in enumerate(reach_fields)},
            node_id=_int_rows(ds, "node_id", node_rows),
            node_reach_id=_int_rows(ds, "node_reach_id", node_rows),
            node={f: node_obs[:, i] for i, f in enumerate(node_fields)},
        )


def _rows(group, name: str, rows: slice, ncols: int) -> np.ndarray:
    if rows.stop is not None and rows.stop <= rows.start:
        return np.zeros((0, ncols))
    var = group.variables[name]
    return to_float(var[rows], getattr(var, "_FillValue", FLOAT_FILL))


def _int_rows(group, name: str, rows: slice) -> np.ndarray:
    if rows.stop is not None and rows.stop <= rows.start:
        return np.zeros(0, np.int64)
    return np.asarray(group.variables[name][rows], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# FLPE results: {reach_id}_{algo}.nc, MetroMan {id1-id2-...}_metroman.nc


def write_flpe(path, results: list[FlpeResult]) -> None:
    """Write one or more reaches' results: dims nr, nt (padded with fill to the longest)."""
    if not results:
        raise ValueError(f"{path}: no FLPE results to write")
    algorithm, flow_law = results[0].algorithm, results[0].flow_law
    nr, nt = len(results), max(len(r.time) for r in results)
    params = list(dict.fromkeys(name for r in results for name in r.params))
    padded = {name: np.full((nr, nt), np.nan) for name in ("time", "q", "q_u")}
    for i, result in enumerate(results):
        k = len(result.time)
        for name in padded:
            padded[name][i, :k] = getattr(result, name)
    with create_dataset(path, algorithm=algorithm, flow_law=flow_law) as ds:
        ds.createDimension("nr", nr)
        ds.createDimension("nt", nt)
        ds.createVariable("reach_id", "i8", ("nr",))[...] = [int(r.reach_id) for r in results]
        # The true series length per reach, so that padding is never mistaken for data.
        put_int(ds, "n_time", [len(r.time) for r in results], ("nr",))
        put_float(ds, "time", padded["time"], ("nr", "nt"), units=TIME_UNITS)
        put_float(ds, "q", padded["q"], ("nr", "nt"), units="m^3/s")
        put_float(ds, "q_u", padded["q_u"], ("nr", "nt"), units="m^3/s")
        for name in params:
            put_float(ds, name, [r.params.get(name, np.nan) for r in results], ("nr",))


def read_flpe(path) -> list[FlpeResult]:
    with open_dataset(path, "FLPE result") as ds:
        algorithm, flow_law = str(ds.getncattr("algorithm")), str(ds.getncattr("flow_law"))
        reach_ids = get_int(ds, "reach_id")
        time, q, q_u = (get_float(ds, name) for name in ("time", "q", "q_u"))
        lengths = get_int(ds, "n_time") if "n_time" in ds.variables else None
        skip = {"reach_id", "n_time", "time", "q", "q_u"}
        params = {
            name: get_float(ds, name)
            for name, var in ds.variables.items()
            if name not in skip and var.dimensions == ("nr",)
        }
        results = []
        for i, rid in enumerate(reach_ids):
            k = int(lengths[i]) if lengths is not None else int(np.isfinite(time[i]).sum())
            results.append(
                FlpeResult(
                    algorithm=algorithm,
                    flow_law=flow_law,
                    reach_id=int(rid),
                    time=time[i, :k],
                    q=q[i, :k],
                    q_u=q_u[i, :k],
                    params={name: float(values[i]) for name, values in params.items()},
                )
            )
        return results


def flpe_name(algorithm: str, reach_ids) -> str:
    """File name of an FLPE result: ``{rid}_{algo}.nc``, or ``{id1-id2-...}_metroman.nc``."""
    return f"{contract.set_id(reach_ids)}_{algorithm}.nc"


def find_flpe_result(
    flpe_dir, algorithm: str, reach_id: int, sets: list[list[dict]] | None = None
) -> FlpeResult:
    """One reach's result of one algorithm under ``flpe_dir/{algorithm}/``.

    MetroMan writes one file per inversion set; the set holding the reach comes from the
    sets.json items when given, else from the file names. UpstreamMissing when no file holds
    the reach (the algorithm failed or skipped it) or MetroMan left it out of its set;
    ItemError when a reach's own file lacks it.
    """
    folder = Path(flpe_dir) / algorithm
    reach_id = int(reach_id)
    if algorithm == "metroman":
        path = None
        if sets is not None:
            for reach_set in sets:
                ids = [int(item["reach_id"]) for item in reach_set]
                if reach_id in ids:
                    path = folder / flpe_name(algorithm, ids)
                    break
        else:
            for candidate in sorted(folder.glob(f"*_{algorithm}.nc")):
                ids = candidate.name[: -len(f"_{algorithm}.nc")].split("-")
                if str(reach_id) in ids:
                    path = candidate
                    break
        if path is None:
            raise UpstreamMissing(
                f"reach {reach_id}: no {algorithm} result (no inversion set file under "
                f"{folder} holds the reach)"
            )
    else:
        path = folder / flpe_name(algorithm, [reach_id])
    if not path.is_file():
        raise UpstreamMissing(f"reach {reach_id}: no {algorithm} result ({path} does not exist)")
    for result in read_flpe(path):
        if result.reach_id == reach_id:
            return result
    if algorithm == "metroman":
        # MetroMan leaves out reaches that share too few valid times with the rest of the set.
        raise UpstreamMissing(f"reach {reach_id}: left out of its metroman set ({path})")
    raise ItemError(f"{path}: has no result for reach {reach_id}; rerun {algorithm}")
