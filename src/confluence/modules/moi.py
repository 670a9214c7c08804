"""moi (basin): integrate every FLPE algorithm over a basin (science.moi).

Reads R/input/W (basin.json item), the SWOT files of the basin's reaches, the SWORD file
(R/input/sword/, for the topology; without it the basin is treated as one river segment)
and R/flpe/{algo}/ for every algorithm folder present (MetroMan through sets.json beside
the work list). Writes R/output/{rid}_integrator.nc for each reach of the basin that has at
least one algorithm's result: per algorithm q, q_u, the refit parameters, the FLPE
parameters (flpe_*), qbar_reachScale and qbar_basinScale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import ItemError, UpstreamMissing
from confluence.modules import _common
from confluence.science import moi


def basin_topology(sword: ncio.Sword, basin_id: int) -> dict[int, list[int]]:
    """Upstream neighbours of every SWORD reach of the basin (links within the basin only)."""
    in_basin = sword.reach_id // 10**7 == int(basin_id)
    upstream = {}
    for i in np.flatnonzero(in_basin):
        count = int(sword.n_rch_up[i])
        ups = [int(u) for u in sword.rch_id_up[:count, i] if contract.basin_of(u) == basin_id]
        upstream[int(sword.reach_id[i])] = ups
    return upstream


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    item = _common.item_of(root, worklist, index, ("basin_id", "reach_id"))
    basin_id = int(item["basin_id"])
    reach_ids = [int(r) for r in item["reach_id"]]
    if not reach_ids:
        raise ItemError(f"basin {basin_id}: the work-list item lists no reaches")
    root = Path(root)
    sets = _common.sets_of(root, worklist)
    results, observations, missing = {}, {}, []
    for reach_id in reach_ids:
        with _common.about_reach(reach_id):
            found = _common.flpe_results(root / _common.FLPE, reach_id, sets)
            if not found:
                missing.append(reach_id)
                continue
            swot_file = _common.input_file(root, "swot", contract.swot_name(reach_id))
            try:
                obs = ncio.read_swot(swot_file).observations()
            except UpstreamMissing:
                missing.append(reach_id)
                continue
        observations[reach_id] = obs
        results[reach_id] = {a: _common.aligned(r, obs.time) for a, r in found.items()}
    if not results:
        raise UpstreamMissing(
            f"basin {basin_id}: no FLPE algorithm has a result for any of its "
            f"{len(reach_ids)} reaches under {root / _common.FLPE}"
        )

    sword_file = _common.sword_path(root, item, reach_ids[0])
    upstream = None
    if sword_file.is_file():
        upstream = basin_topology(ncio.read_sword(sword_file), basin_id)
    integrated = moi.integrate_basin(results, observations, upstream)
    for reach_id, per_algorithm in integrated.items():
        _common.write_integrator(
            root / _common.OUTPUT / f"{reach_id}_integrator.nc",
            reach_id,
            observations[reach_id].time,
            per_algorithm,
            basin_id=basin_id,
            topology="sword" if upstream is not None else "none (one segment)",
            reaches_without_results=" ".join(str(r) for r in missing),
        )
