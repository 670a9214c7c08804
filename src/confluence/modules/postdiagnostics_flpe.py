"""postdiagnostics_flpe (reach): realism and stability flags of every FLPE algorithm's Q.

Reads R/input/W, the reach's SWOT file (time axis), the SoS priors (min_q, max_q) and
R/flpe/{algo}/ for every algorithm folder present; writes R/output/{rid}_flpe_diag.nc.
Optional arguments: ``previous=DIR``, a previous run's FLPE results (same layout as R/flpe,
absolute or relative to the mount root) for the stability flag (without it the flag is -1,
not assessed); ``tolerance=0.25``, the relative change of mean Q counted as unstable.
"""

from __future__ import annotations

from pathlib import Path

from confluence import ncio
from confluence.contract import UpstreamMissing
from confluence.modules import _common


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    opts = _common.options(extra, ("previous", "tolerance"), "postdiagnostics_flpe")
    tolerance = _common.tolerance_option(opts, "postdiagnostics_flpe")
    item = _common.reach_item(root, worklist, index)
    reach_id = int(item["reach_id"])
    with _common.about_reach(reach_id):
        sets = _common.sets_of(root, worklist)
        results = _common.flpe_results(Path(root) / _common.FLPE, reach_id, sets)
        if not results:
            raise UpstreamMissing(
                f"reach {reach_id}: no FLPE algorithm has a result under {Path(root) / 'flpe'}"
            )
        axis = ncio.read_swot(_common.swot_path(root, item)).time
        prior = ncio.read_sos(_common.sos_path(root, item)).prior(reach_id)
        previous_dir = _common.resolve(root, opts["previous"]) if "previous" in opts else None
        diag = _common.Diagnostics(reach_id, axis)
        for algorithm, result in results.items():
            result = _common.aligned(result, axis)
            previous = None
            if previous_dir is not None:
                try:
                    before = ncio.find_flpe_result(previous_dir, algorithm, reach_id, sets)
                    previous = (before.time, before.q)
                except UpstreamMissing:
                    previous = None
            diag.algorithms[algorithm] = _common.assess(
                axis, result.q, result.q_u, prior.min_q, prior.max_q, previous, tolerance
            )
        _common.write_diagnostics(
            Path(root) / _common.OUTPUT / f"{reach_id}_flpe_diag.nc",
            diag,
            min_q=prior.min_q,
            max_q=prior.max_q,
            stability_tolerance=tolerance,
            previous=str(previous_dir) if previous_dir else "none",
        )
