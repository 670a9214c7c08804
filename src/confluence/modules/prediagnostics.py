"""prediagnostics (reach): quality-filter a reach's SWOT observations.

Reads R/input/W and R/input/swot/{rid}_SWOT.nc; writes R/output/{rid}_prediagnostics.nc
(variables time, valid, reasons over nt). The SWOT file is only read: the original module
rewrote it in place, which made reruns irreproducible. Optional ``key=value`` arguments
override the thresholds: max_dark_frac, min_obs_frac_n, min_good_nodes, tukey_k.
"""

from __future__ import annotations

from pathlib import Path

from confluence import ncio
from confluence.contract import ItemError
from confluence.modules import _common
from confluence.science import diagnostics

#: Thresholds that ``key=value`` arguments may override (see science.diagnostics.Thresholds).
OPTIONS = ("max_dark_frac", "min_obs_frac_n", "min_good_nodes", "tukey_k")


def thresholds_from(extra: list[str], n_nodes: int) -> diagnostics.Thresholds:
    values = {}
    for key, text in _common.options(extra, OPTIONS, "prediagnostics").items():
        try:
            values[key] = int(text) if key == "min_good_nodes" else float(text)
        except ValueError:
            raise ItemError(f"prediagnostics: {key}={text} is not a number") from None
    # A reach with few nodes cannot have many good ones: never ask for more than it has.
    requested = values.get("min_good_nodes", diagnostics.Thresholds.min_good_nodes)
    values["min_good_nodes"] = min(requested, max(n_nodes, 1))
    return diagnostics.Thresholds(**values)


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    item = _common.reach_item(root, worklist, index)
    reach_id = int(item["reach_id"])
    _common.options(extra, OPTIONS, "prediagnostics")  # fail on a bad argument before reading
    with _common.about_reach(reach_id):
        swot = ncio.read_swot(_common.swot_path(root, item))
        thresholds = thresholds_from(extra, len(swot.node_id))
        valid, reasons = diagnostics.prediagnose(
            swot.width,
            swot.wse,
            swot.slope2,
            swot.d_x_area,
            ice_clim_f=swot.ice_clim_f,
            ice_dyn_f=swot.ice_dyn_f,
            dark_frac=swot.dark_frac,
            obs_frac_n=swot.obs_frac_n,
            n_good_nod=swot.n_good_nod,
            thresholds=thresholds,
        )
        masks, meanings = diagnostics.flag_meanings()
        _common.write_prediagnostics(
            Path(root) / _common.OUTPUT / f"{reach_id}_prediagnostics.nc",
            _common.Prediagnostics(reach_id, swot.time, valid, reasons),
            masks,
            meanings,
            n_valid=int(valid.sum()),
            **vars(thresholds),
        )
