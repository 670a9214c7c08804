"""offline (reach): Q of every algorithm recomputed from the observations with the integrated
parameters, with propagated uncertainty, and the consensus (median over algorithms).

Reads R/input/W, the reach's SWOT file, R/moi/{rid}_integrator.nc (the refit parameters;
where MOI has no result for an algorithm, or no file at all, the FLPE parameters of
R/flpe/{algo}/ are used) and writes R/output/{rid}_offline.nc: one group per algorithm and
one named "consensus", each with q and q_u over nt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confluence import ncio
from confluence.contract import UpstreamMissing
from confluence.modules import _common
from confluence.science import offline


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    item = _common.reach_item(root, worklist, index)
    reach_id = int(item["reach_id"])
    root = Path(root)
    with _common.about_reach(reach_id):
        flpe = _common.flpe_results(root / _common.FLPE, reach_id, _common.sets_of(root, worklist))
        try:
            integrated = _common.read_integrator(root / _common.MOI / f"{reach_id}_integrator.nc")
        except UpstreamMissing:
            integrated = {}
        if not flpe and not integrated:
            raise UpstreamMissing(
                f"reach {reach_id}: neither MOI ({root / _common.MOI}) nor any FLPE algorithm "
                f"({root / _common.FLPE}) has a result"
            )
        obs = ncio.read_swot(_common.swot_path(root, item)).observations()
        series = {}
        for algorithm in sorted(set(flpe) | set(integrated)):
            if algorithm in integrated:
                res, source = integrated[algorithm], "moi"
            else:
                res, source = flpe[algorithm], "flpe"
            estimated = np.isfinite(_common.on_axis(obs.time, res.time, res.q))
            q, q_u = offline.offline_discharge(res.flow_law, res.params, obs, estimated)
            series[algorithm] = _common.OfflineSeries(q, q_u, res.flow_law, res.params, source)
        series[_common.CONSENSUS] = _common.OfflineSeries(
            q=offline.consensus([s.q for s in series.values()]),
            q_u=offline.consensus([s.q_u for s in series.values()]),
            flow_law="median",
            source=" ".join(series),
        )
        _common.write_offline(
            root / _common.OUTPUT / f"{reach_id}_offline.nc",
            reach_id,
            obs.time,
            series,
            model_relative_uncertainty=offline.MODEL_RELATIVE_UNCERTAINTY,
        )
