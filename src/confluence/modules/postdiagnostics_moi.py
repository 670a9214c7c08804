"""postdiagnostics_moi (reach): realism and stability flags of MOI's integrated Q.

Reads R/input/W, the SoS priors (min_q, max_q) and R/moi/{rid}_integrator.nc; writes
R/output/{rid}_moi_diag.nc. Optional arguments: ``previous=DIR``, a previous run's MOI
output (``{rid}_integrator.nc`` files; absolute or relative to the mount root) for the
stability flag (without it the flag is -1, not assessed); ``tolerance=0.25``.
"""

from __future__ import annotations

from pathlib import Path

from confluence import ncio
from confluence.contract import UpstreamMissing
from confluence.modules import _common


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    opts = _common.options(extra, ("previous", "tolerance"), "postdiagnostics_moi")
    tolerance = _common.tolerance_option(opts, "postdiagnostics_moi")
    item = _common.reach_item(root, worklist, index)
    reach_id = int(item["reach_id"])
    name = f"{reach_id}_integrator.nc"
    with _common.about_reach(reach_id):
        integrated = _common.read_integrator(Path(root) / _common.MOI / name)
        if not integrated:
            raise UpstreamMissing(f"reach {reach_id}: {name} holds no algorithm")
        time = next(iter(integrated.values())).time
        prior = ncio.read_sos(_common.sos_path(root, item)).prior(reach_id)
        before = {}
        previous_dir = _common.resolve(root, opts["previous"]) if "previous" in opts else None
        if previous_dir is not None and (previous_dir / name).is_file():
            before = _common.read_integrator(previous_dir / name)
        diag = _common.Diagnostics(reach_id, time)
        for algorithm, res in integrated.items():
            previous = (
                (before[algorithm].time, before[algorithm].q) if algorithm in before else None
            )
            diag.algorithms[algorithm] = _common.assess(
                time, res.q, res.q_u, prior.min_q, prior.max_q, previous, tolerance
            )
        _common.write_diagnostics(
            Path(root) / _common.OUTPUT / f"{reach_id}_moi_diag.nc",
            diag,
            min_q=prior.min_q,
            max_q=prior.max_q,
            stability_tolerance=tolerance,
            previous=str(previous_dir) if previous_dir else "none",
        )
