"""The input module: one reach's SWOT time series, gathered from the raw per-pass granules.

Reads ``R/swot_raw/{continent}/SWOT_L2_HR_RiverSP_*.nc`` (only the reach's rows of each
granule) and writes ``R/swot/{reach_id}_SWOT.nc`` in the contract layout, observations sorted
by time. Quality filtering is left to prediagnostics: every record SWOT made is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import ItemError

GRANULE_PATTERN = "SWOT_L2_HR_RiverSP_*.nc"


def gather(reach_id: int, granules: list[Path]) -> ncio.SwotReach:
    """The reach's records from ``granules``, sorted by time; ItemError when there are none."""
    reach_id = int(reach_id)
    pieces = []
    for path in granules:
        granule = ncio.read_granule(path, reach_id)
        if granule.reach_id.size == 0:
            continue
        if granule.reach_id.size > 1:
            raise ItemError(
                f"{path}: holds {granule.reach_id.size} records of reach {reach_id}; a pass "
                "sees a reach once, so the granule is corrupt: replace it"
            )
        if np.isfinite(granule.reach["time"][0]):  # a fill time is no observation
            pieces.append(granule)
    if not pieces:
        raise ItemError(
            f"reach {reach_id}: no SWOT observations in the {len(granules)} granules of "
            f"{granules[0].parent if granules else 'swot_raw'}; the reach was not observed"
        )
    time = np.array([g.reach["time"][0] for g in pieces])
    order = np.argsort(time, kind="stable")
    pieces = [pieces[i] for i in order]
    time = time[order]
    nt = len(pieces)

    node_id = np.unique(np.concatenate([g.node_id for g in pieces]))
    node = {name: np.full((node_id.size, nt), np.nan) for name in ncio.GRANULE_NODE_FIELDS}
    for column, granule in enumerate(pieces):
        rows = np.searchsorted(node_id, granule.node_id)
        for name in ncio.GRANULE_NODE_FIELDS:
            node[name][rows, column] = granule.node[name]
    reach = {name: np.array([g.reach[name][0] for g in pieces]) for name in ncio.SWOT_REACH_VARS}
    return ncio.SwotReach(
        reach_id=reach_id,
        time=time,
        time_str=ncio.time_to_str(time),
        node_id=node_id,
        node=node,
        **reach,
    )


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    root = Path(root)
    item = contract.read_worklist_item(root / worklist, index)
    try:
        reach_id = int(item["reach_id"])
    except (KeyError, TypeError, ValueError):
        raise ItemError(
            f"{root / worklist} item {index}: {item!r} is not a reach object with a reach_id"
        ) from None
    name = item.get("swot") or contract.swot_name(reach_id)
    if Path(name).name != name:
        raise ItemError(f"reach {reach_id}: work-list swot name {name!r} must be a file name")
    raw_dir = root / "swot_raw" / contract.continent_of(reach_id)
    granules = sorted(raw_dir.glob(GRANULE_PATTERN))
    if not granules:
        raise ItemError(
            f"reach {reach_id}: no raw SWOT granules ({GRANULE_PATTERN}) under {raw_dir}; "
            "stage the SWOT input there (or run confluence synthesize)"
        )
    ncio.write_swot(root / "swot" / name, gather(reach_id, granules))
