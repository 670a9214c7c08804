"""The reference FLPE modules: geobam, hivdi, momma, sad, sic4dvar (one reach per item) and
metroman (one inversion set per item), thin I/O around confluence.science.flpe.

Under the mount root R (the module table of the architecture):

- reads the work list R/input/W (reaches.json, or sets.json for metroman), the reach's
  R/input/swot/{rid}_SWOT.nc and the SoS R/input/sos/{sos} named by the item;
- reads the per-observation flags R/prediagnostics/{rid}_prediagnostics.nc (variable
  ``valid`` over nt, 1 = keep) when the R/prediagnostics mount exists; without the mount
  every observation is used;
- writes R/output/{rid}_{algo}.nc, or R/output/{id1-id2-...}_metroman.nc for a set.

A missing input (SWOT file, SoS, flags file) raises UpstreamMissing naming the reach and the
file; a reach the science cannot process raises ItemError naming it. Each reach's random
generator is seeded from its ID, so reruns reproduce results exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import ItemError, UpstreamMissing
from confluence.science import flpe
from confluence.science.types import Observations, ReachPrior

INPUT, OUTPUT, PREDIAGNOSTICS = "input", "output", "prediagnostics"


def _no_arguments(algorithm: str, extra: list[str]) -> None:
    if extra:
        raise ItemError(
            f"{algorithm}: unexpected arguments {' '.join(extra)}; the FLPE modules take only "
            "the work list"
        )


def _reach_object(item, where: str) -> dict:
    if not isinstance(item, dict) or "reach_id" not in item:
        raise ItemError(f"{where}: expected a reach object with reach_id, got {item!r}")
    return item


def prediagnostic_flags(root: Path, reach_id: int, nt: int) -> np.ndarray | None:
    """The reach's keep/reject flags, or None when there is no prediagnostics mount."""
    mount = Path(root) / PREDIAGNOSTICS
    if not mount.is_dir():
        return None
    path = mount / f"{int(reach_id)}_prediagnostics.nc"
    if not path.is_file():
        raise UpstreamMissing(
            f"reach {reach_id}: prediagnostics flags {path} do not exist (the prediagnostics "
            "item of this reach failed or has not run)"
        )
    with ncio.open_dataset(path, "prediagnostics flags") as ds:
        if "valid" not in ds.variables:
            raise ItemError(
                f"{path}: no variable 'valid'; rerun prediagnostics for reach {reach_id}"
            )
        valid = ncio.to_float(ds.variables["valid"][...])
    if valid.shape != (nt,):
        raise ItemError(
            f"{path}: 'valid' has shape {valid.shape} but the SWOT file of reach {reach_id} has "
            f"{nt} observations; rerun prediagnostics"
        )
    return valid == 1


class _Inputs:
    """Reads a reach's observations and priors; keeps each SoS file read once per item."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._sos: dict[Path, ncio.Sos] = {}

    def sos(self, name: str) -> ncio.Sos:
        path = self.root / INPUT / "sos" / name
        if path not in self._sos:
            self._sos[path] = ncio.read_sos(path)
        return self._sos[path]

    def reach(self, item: dict) -> tuple[Observations, ReachPrior]:
        rid = int(item["reach_id"])
        continent = contract.continent_of(rid)
        swot_path = self.root / INPUT / "swot" / (item.get("swot") or contract.swot_name(rid))
        try:
            swot = ncio.read_swot(swot_path)
            if int(swot.reach_id) != rid:
                raise ItemError(f"{swot_path} holds reach {swot.reach_id}, not reach {rid}")
            prior = self.sos(item.get("sos") or contract.sos_priors_name(continent)).prior(rid)
        except ItemError as err:  # name the reach in every message, keep the error type
            text = str(err)
            raise type(err)(text if f"reach {rid}" in text else f"reach {rid}: {text}") from None
        valid = prediagnostic_flags(self.root, rid, swot.nt)
        return swot.observations(valid), prior


def run_reach(algorithm: str, worklist: str, index: int, root: Path, extra: list[str]) -> Path:
    """One reach of a single-reach algorithm; returns the file written."""
    _no_arguments(algorithm, extra)
    path = Path(root) / INPUT / worklist
    item = _reach_object(contract.read_worklist_item(path, index), f"{path} item {index}")
    obs, prior = _Inputs(root).reach(item)
    result = flpe.REACH_ALGORITHMS[algorithm](obs, prior, flpe.reach_rng(obs.reach_id))
    out = Path(root) / OUTPUT / ncio.flpe_name(algorithm, [obs.reach_id])
    ncio.write_flpe(out, [result])
    return out


def run_metroman(worklist: str, index: int, root: Path, extra: list[str]) -> Path:
    """One inversion set (an item of sets.json: a list of reach objects)."""
    _no_arguments("metroman", extra)
    path = Path(root) / INPUT / worklist
    items = contract.read_worklist_item(path, index)
    if not isinstance(items, list) or not items:
        raise ItemError(
            f"{path} item {index}: expected a non-empty list of reach objects (an inversion set "
            f"of sets.json), got {items!r}"
        )
    items = [_reach_object(item, f"{path} item {index}") for item in items]
    inputs = _Inputs(root)
    pairs = [inputs.reach(item) for item in items]
    ids = [obs.reach_id for obs, _ in pairs]
    results = flpe.metroman(
        [obs for obs, _ in pairs], [prior for _, prior in pairs], flpe.reach_rng(ids)
    )
    out = Path(root) / OUTPUT / ncio.flpe_name("metroman", ids)
    ncio.write_flpe(out, results)
    return out


def run_geobam(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    run_reach("geobam", worklist, index, root, extra)


def run_hivdi(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    run_reach("hivdi", worklist, index, root, extra)


def run_momma(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    run_reach("momma", worklist, index, root, extra)


def run_sad(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    run_reach("sad", worklist, index, root, extra)


def run_sic4dvar(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    run_reach("sic4dvar", worklist, index, root, extra)
