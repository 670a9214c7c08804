"""The priors module: a new SoS version for one continent (continent.json item).

Reads the previous version ``R/sos/previous/{c}_sword_v16_SOS_priors.nc`` (model priors, no
gauges) and the gauge records ``R/gage/{c}_gauges.nc``; writes ``R/sos/{c}_sword_v16_SOS_
priors.nc`` with one gauge group per agency. Arguments: the run type (``constrained`` or
``unconstrained``), then optionally the gauge agencies to use (e.g. ``usgs grdc``; the legacy
``gbpriors`` keeps the gbpriors, which every run does). Constrained runs replace the model
priors of reaches with a calibration gauge by the gauge's statistics; unconstrained runs keep
the model priors and write the gauges with CAL = 0 (validation still needs them). The previous
version is never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confluence import contract, ncio
from confluence.contract import ItemError, UpstreamMissing
from confluence.science import priors as science

RUN_TYPES = ("constrained", "unconstrained")
#: Legacy source arguments that are not gauge agencies (gbpriors are always kept).
NON_AGENCY_SOURCES = {"gbpriors"}


def gauge_file(root: Path, continent: str) -> Path:
    return Path(root) / "gage" / ncio.gauge_file_name(continent)


def parse_arguments(extra: list[str]) -> tuple[str, set[str] | None]:
    """(run type, agencies to use or None for all) from the module's further arguments."""
    if not extra:
        raise ItemError(
            "priors needs the run type as its first argument after the work list: "
            "constrained or unconstrained"
        )
    run_type = extra[0].lower()
    if run_type not in RUN_TYPES:
        raise ItemError(
            f"priors: run type {extra[0]!r} is not one of {', '.join(RUN_TYPES)}; pass it as "
            "the first argument after the work list"
        )
    agencies = {a.upper() for a in extra[1:] if a.lower() not in NON_AGENCY_SOURCES}
    return run_type, agencies or None


def gauge_groups(
    records: ncio.GaugeRecords,
    reach_ids: np.ndarray,
    run_type: str,
    agencies: set[str] | None = None,
) -> dict[str, ncio.GaugeGroup]:
    """The SoS gauge groups: one per agency, gauges on the SoS's reaches, in reach order."""
    known = np.isin(records.reach_id, reach_ids)
    qt = ncio.ordinal_from_seconds(records.time)
    groups = {}
    for agency in sorted(set(records.agency)):
        if agencies is not None and agency.upper() not in agencies:
            continue
        rows = np.flatnonzero(known & (np.array(records.agency) == agency))
        if rows.size == 0:
            continue
        rows = rows[np.argsort(records.reach_id[rows], kind="stable")]
        q = records.q[rows]
        stats = [science.discharge_statistics(row, records.time) for row in q]
        groups[agency] = ncio.GaugeGroup(
            agency=agency,
            reach_id=records.reach_id[rows],
            q=q,
            qt=np.broadcast_to(qt, q.shape).copy(),
            cal=records.cal[rows] if run_type == "constrained" else np.zeros(rows.size, bool),
            station_id=[records.station_id[i] for i in rows],
            stats={
                name: np.array([s[name] for s in stats], float) for name in science.MODEL_STATISTICS
            },
        )
    return groups


def constrain(sos: ncio.Sos, groups: dict[str, ncio.GaugeGroup]) -> tuple[dict, dict, int]:
    """Model and gbpriors/reach with calibration gauges' statistics; and how many reaches.

    A reach with several calibration gauges takes the one with the longest record. Gauges
    with less than a year of data leave the model priors alone.
    """
    best: dict[int, tuple[int, dict]] = {}
    for group in groups.values():
        for g in np.flatnonzero(group.cal):
            n_days = int(np.isfinite(group.q[g]).sum())
            if not science.usable_for_priors(group.q[g]):
                continue
            row = sos.row(int(group.reach_id[g]))
            if row not in best or n_days > best[row][0]:
                stats = {name: group.stats[name][g] for name in science.MODEL_STATISTICS}
                best[row] = (n_days, stats)
    rows = sorted(best)
    model = science.replace_model_priors(sos.model, rows, [best[r][1] for r in rows])
    gb = {name: np.array(values, copy=True) for name, values in sos.gbpriors_reach.items()}
    if rows and "logQ_hat" in gb:
        index = np.array(rows)
        gb["logQ_hat"][index] = np.log(model["mean_q"][index])
        if "lowerbound_logQ" in gb:
            gb["lowerbound_logQ"][index] = np.log(model["min_q"][index] / 2.0)
        if "upperbound_logQ" in gb:
            gb["upperbound_logQ"][index] = np.log(model["max_q"][index] * 2.0)
    return model, gb, len(rows)


def new_version(
    previous: ncio.Sos,
    records: ncio.GaugeRecords,
    run_type: str,
    agencies: set[str] | None = None,
) -> ncio.Sos:
    """The new SoS version (the previous one is not changed)."""
    groups = gauge_groups(records, previous.reach_id, run_type, agencies)
    if run_type == "constrained":
        model, gb_reach, calibrated = constrain(previous, groups)
    else:
        model, gb_reach, calibrated = previous.model, previous.gbpriors_reach, 0
    attrs = {k: v for k, v in previous.attrs.items() if k not in ("version",)}
    attrs.update(
        run_type=run_type,
        gauge_agencies=" ".join(groups) or "none",
        calibrated_reaches=calibrated,
        previous_version=Path(previous.path).name,
    )
    return ncio.Sos(
        reach_id=previous.reach_id,
        x=previous.x,
        y=previous.y,
        node_id=previous.node_id,
        node_reach_id=previous.node_reach_id,
        model=model,
        gbpriors_reach=gb_reach,
        gbpriors_node=previous.gbpriors_node,
        gauges=groups,
        attrs=attrs,
    )


def run(worklist: str, index: int, root: Path, extra: list[str]) -> None:
    root = Path(root)
    item = contract.read_worklist_item(root / worklist, index)
    if not (isinstance(item, dict) and len(item) == 1 and next(iter(item)) in contract.CONTINENTS):
        raise ItemError(
            f"{root / worklist} item {index}: {item!r} is not a continent.json item such as "
            '{"na": [7, 8, 9]}'
        )
    continent = next(iter(item))
    run_type, agencies = parse_arguments(extra)
    name = contract.sos_priors_name(continent)
    previous_path = root / "sos" / "previous" / name
    try:
        previous = ncio.read_sos(previous_path)
        records = ncio.read_gauges(gauge_file(root, continent))
    except UpstreamMissing as err:
        # Both are inputs staged before the run, not outputs of an upstream item.
        raise ItemError(f"continent {continent}: input missing: {err}") from None
    ncio.write_sos(root / "sos" / name, new_version(previous, records, run_type, agencies))
