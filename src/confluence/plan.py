"""Planning: inversion sets, chunks ("reach sets") and their work lists, from a Domain.

- An inversion set is a path of adjacent reaches along downstream links, with no confluence
  inside it (MetroMan assumes the same discharge through every reach of a set), at most
  ``max_set_size`` reaches. Every reach is in exactly one set.
- A chunk is the unit of one Snakemake job: whole basins of one continent, packed in
  basin-ID order, at most ``chunk_size`` reaches. A basin larger than ``chunk_size`` is split
  into near-equal parts at set boundaries, one chunk each; MOI then integrates each part
  separately (its basin.json item holds only the part's reaches).
- Continent-scoped modules run one job per continent; that unit's ID is the continent code.

Chunk IDs are ``{continent}_{first basin}-{last basin}`` (``na_7401-7433``),
``{continent}_{basin}`` for a single basin and ``{continent}_{basin}p{k}`` for part k of a
split basin. They depend only on the continent's own basins, so they are stable across runs
and safe in file names and AWS job names.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from confluence import contract
from confluence.domain import BASIN_DIVISOR, Domain, domain_from_config

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_MAX_SET_SIZE = 5
#: AWS Batch array jobs hold at most 10,000 children.
MAX_CHUNK_SIZE = 10_000
WORKLIST_NAMES = ("reaches.json", "sets.json", "basin.json", "continent.json")
#: Scope -> the work list a module of that scope indexes.
SCOPE_WORKLIST = {
    "reach": "reaches.json",
    "set": "sets.json",
    "basin": "basin.json",
    "continent": "continent.json",
}


@dataclass(frozen=True)
class Chunk:
    """A reach set: the reaches one Snakemake job (one Batch array per module) processes."""

    id: str
    continent: str
    basin_ids: tuple[int, ...]
    #: Ascending reach IDs.
    reach_ids: tuple[int, ...]
    #: Inversion sets, each ordered from upstream to downstream.
    sets: tuple[tuple[int, ...], ...]
    #: For part k of a basin split into n parts: (k, n); (0, 0) for whole basins.
    part: tuple[int, int] = (0, 0)


@dataclass(frozen=True, eq=False)
class Plan:
    chunks: tuple[Chunk, ...]
    #: Continent codes present, in continent.json order.
    continents: tuple[str, ...]
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_set_size: int = DEFAULT_MAX_SET_SIZE
    _by_id: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({chunk.id: chunk for chunk in self.chunks})

    def chunks_of(self, continent: str) -> list[Chunk]:
        return [chunk for chunk in self.chunks if chunk.continent == continent]

    def chunk(self, chunk_id: str) -> Chunk:
        try:
            return self._by_id[chunk_id]
        except KeyError:
            raise KeyError(
                f"unknown chunk {chunk_id!r}; run `confluence plan` to list the chunk IDs"
            ) from None

    def unit_ids(self, scope: str | None = None) -> list[str]:
        """Chunk IDs and continent codes; with a scope, the units its modules run on."""
        chunks = [chunk.id for chunk in self.chunks]
        if scope is None:
            return chunks + list(self.continents)
        _check_scope(scope)
        return list(self.continents) if scope == "continent" else chunks

    def is_continent(self, unit_id: str) -> bool:
        return unit_id in self.continents

    def continent_of(self, unit_id: str) -> str:
        return unit_id if self.is_continent(unit_id) else self.chunk(unit_id).continent

    def _unit_chunks(self, unit_id: str) -> list[Chunk]:
        if self.is_continent(unit_id):
            return self.chunks_of(unit_id)
        return [self.chunk(unit_id)]

    def reach_ids(self, unit_id: str) -> list[int]:
        """Ascending reach IDs of a chunk or a continent."""
        chunks = self._unit_chunks(unit_id)
        if len(chunks) == 1:
            return list(chunks[0].reach_ids)
        return sorted(r for chunk in chunks for r in chunk.reach_ids)

    def sets(self, unit_id: str) -> list[tuple[int, ...]]:
        return [s for chunk in self._unit_chunks(unit_id) for s in chunk.sets]

    def basins(self, unit_id: str) -> dict[int, list[int]]:
        """Basin ID -> its reach IDs in the unit (a split basin's chunk holds only its part)."""
        basins: dict[int, list[int]] = {}
        for rid in self.reach_ids(unit_id):
            basins.setdefault(rid // BASIN_DIVISOR, []).append(rid)
        return basins

    def items(self, unit_id: str, scope: str) -> int:
        """How many items a module of ``scope`` has in the unit (its array size)."""
        _check_scope(scope)
        chunks = self._unit_chunks(unit_id)
        if scope == "reach":
            return sum(len(chunk.reach_ids) for chunk in chunks)
        if scope == "set":
            return sum(len(chunk.sets) for chunk in chunks)
        if scope == "basin":
            return len({b for chunk in chunks for b in chunk.basin_ids})
        return 1

    @cached_property
    def reach_count(self) -> int:
        return sum(len(chunk.reach_ids) for chunk in self.chunks)

    @cached_property
    def set_count(self) -> int:
        return sum(len(chunk.sets) for chunk in self.chunks)

    def summary(self) -> dict:
        """The plan as plain data (counts and IDs; the work lists carry the reach IDs)."""
        return {
            "chunk_size": self.chunk_size,
            "max_set_size": self.max_set_size,
            "reaches": self.reach_count,
            "sets": self.set_count,
            "continents": {
                c: {
                    "basins": self.items(c, "basin"),
                    "reaches": self.items(c, "reach"),
                    "sets": self.items(c, "set"),
                    "chunks": [chunk.id for chunk in self.chunks_of(c)],
                }
                for c in self.continents
            },
            "chunks": [
                {
                    "id": chunk.id,
                    "continent": chunk.continent,
                    "basin_ids": list(chunk.basin_ids),
                    "reaches": len(chunk.reach_ids),
                    "sets": len(chunk.sets),
                    **({"part": list(chunk.part)} if chunk.part[0] else {}),
                }
                for chunk in self.chunks
            ],
        }


def _check_scope(scope: str) -> None:
    if scope not in SCOPE_WORKLIST:
        raise ValueError(
            f"scope {scope!r} is not allowed; allowed values: {', '.join(SCOPE_WORKLIST)}"
        )


# --- inversion sets ---------------------------------------------------------------------


def _break_cycles(pred: np.ndarray, suspects: np.ndarray) -> None:
    """Cut each cycle of single-upstream links at its smallest index (bad topology only)."""
    remaining = set(int(i) for i in suspects)
    while remaining:
        start = min(remaining)
        path = [start]
        node = int(pred[start])
        while node >= 0 and node != start and node not in path:
            path.append(node)
            node = int(pred[node])
        remaining.difference_update(path)
        if node == start:
            pred[start] = -1


def inversion_sets(domain: Domain, max_set_size: int = DEFAULT_MAX_SET_SIZE) -> list[np.ndarray]:
    """Inversion sets as arrays of reach indices into the domain, upstream to downstream.

    A link u -> d joins a set when u is d's only upstream reach: the maximal paths of such
    links ("chains", between confluences, sources and outlets) are cut into near-equal parts
    of at most ``max_set_size``. Sets are ordered by their chain's most upstream reach, so
    they come basin by basin in ID order.
    """
    order, bounds = _set_layout(domain, max_set_size)
    return np.split(order, bounds[1:-1])


def _set_layout(domain: Domain, max_set_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Reach indices in set order, and set boundaries: set k is order[bounds[k]:bounds[k+1]]."""
    if max_set_size < 1:
        raise ValueError(f"max_set_size must be at least 1, not {max_set_size}")
    n = len(domain)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    dn = domain.downstream_index
    n_up = domain.upstream_count
    pred = np.full(n, -1, dtype=np.int64)
    src = np.flatnonzero(dn >= 0)
    single = src[n_up[dn[src]] == 1]
    pred[dn[single]] = single

    # List ranking by pointer jumping: after k rounds each reach points 2**k steps upstream,
    # so ceil(log2 n) rounds reach every chain head; reaches that never settle are on a cycle.
    index = np.arange(n, dtype=np.int64)
    for _attempt in range(2):
        jump = np.where(pred >= 0, pred, index)
        dist = (pred >= 0).astype(np.int64)
        for _ in range(int(np.ceil(np.log2(n + 1))) + 1):
            nxt = jump[jump]
            if np.array_equal(nxt, jump):
                break
            dist = dist + dist[jump]
            jump = nxt
        unsettled = np.flatnonzero(pred[jump] >= 0)
        if not unsettled.size:
            break
        _break_cycles(pred, unsettled)
    head, pos = jump, dist

    length = np.bincount(head, minlength=n)
    parts = -(-length // max_set_size)
    part = pos * parts[head] // np.maximum(length[head], 1)
    order = np.lexsort((pos, part, head))
    key_head, key_part = head[order], part[order]
    breaks = np.flatnonzero((key_head[1:] != key_head[:-1]) | (key_part[1:] != key_part[:-1])) + 1
    return order, np.concatenate(([0], breaks, [n])).astype(np.int64)


# --- chunks -------------------------------------------------------------------------------


def _split_basin(set_sizes: np.ndarray, chunk_size: int) -> np.ndarray:
    """Part number of each set of a basin too large for one chunk: near-equal parts."""
    total = int(set_sizes.sum())
    starts = np.cumsum(set_sizes) - set_sizes
    count = -(-total // chunk_size)
    while True:
        part = starts * count // total
        _, part = np.unique(part, return_inverse=True)
        if np.bincount(part, weights=set_sizes).max() <= chunk_size:
            return part
        count += 1


def _pack_basins(sizes: np.ndarray, chunk_size: int) -> list[list[int]]:
    """Consecutive basins packed greedily into groups of at most ``chunk_size`` reaches.

    A basin larger than ``chunk_size`` is a group of its own (the caller splits it).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for b, size in enumerate(sizes.tolist()):
        if current and (filled + size > chunk_size or size > chunk_size):
            groups.append(current)
            current, filled = [], 0
        current.append(b)
        filled += size
        if size > chunk_size:
            groups.append(current)
            current, filled = [], 0
    if current:
        groups.append(current)
    return groups


def _chunk_id(continent: str, first: int, last: int) -> str:
    return f"{continent}_{first}" if first == last else f"{continent}_{first}-{last}"


def build_plan(
    domain: Domain,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_set_size: int = DEFAULT_MAX_SET_SIZE,
) -> Plan:
    """Chunks of whole basins (or parts of one large basin), each with its inversion sets."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"run.chunk_size: {chunk_size} is outside 1..{MAX_CHUNK_SIZE} (AWS Batch array jobs "
            "hold at most 10,000 children)"
        )
    if max_set_size > chunk_size:
        raise ValueError(
            f"run.max_set_size: {max_set_size} is larger than run.chunk_size {chunk_size}; "
            "a set must fit in one chunk"
        )
    order, bounds = _set_layout(domain, max_set_size)
    rid = domain.reach_id
    # Every set as a tuple of reach IDs, built once; chunks share these tuples.
    ordered_ids = rid[order].tolist()
    edges = bounds.tolist()
    sets = [tuple(ordered_ids[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    set_basin = domain.basin_id[order[bounds[:-1]]]
    set_size = np.diff(bounds)
    basin_ids, starts, stops = domain.basin_bounds
    # Sets come basin by basin in ID order, so each basin's sets are one slice.
    set_lo = np.searchsorted(set_basin, basin_ids, side="left")
    set_hi = np.searchsorted(set_basin, basin_ids, side="right")

    chunks: list[Chunk] = []
    for continent in domain.continents:
        span = domain.continent_slice(continent)
        first_b = int(np.searchsorted(starts, span.start))
        last_b = int(np.searchsorted(starts, span.stop))
        for group in _pack_basins(stops[first_b:last_b] - starts[first_b:last_b], chunk_size):
            group = [first_b + g for g in group]
            lo, hi = group[0], group[-1]
            if stops[lo] - starts[lo] > chunk_size:
                basin_sets = sets[set_lo[lo] : set_hi[lo]]
                part_of_set = _split_basin(set_size[set_lo[lo] : set_hi[lo]], chunk_size)
                n_parts = int(part_of_set.max()) + 1
                for k in range(n_parts):
                    members = tuple(basin_sets[i] for i in np.flatnonzero(part_of_set == k))
                    chunks.append(
                        Chunk(
                            id=f"{continent}_{int(basin_ids[lo])}p{k + 1}",
                            continent=continent,
                            basin_ids=(int(basin_ids[lo]),),
                            reach_ids=tuple(sorted(r for m in members for r in m)),
                            sets=members,
                            part=(k + 1, n_parts),
                        )
                    )
                continue
            chunks.append(
                Chunk(
                    id=_chunk_id(continent, int(basin_ids[lo]), int(basin_ids[hi])),
                    continent=continent,
                    basin_ids=tuple(int(basin_ids[b]) for b in group),
                    reach_ids=tuple(rid[starts[lo] : stops[hi]].tolist()),
                    sets=tuple(sets[set_lo[lo] : set_hi[hi]]),
                )
            )
    return Plan(tuple(chunks), tuple(domain.continents), chunk_size, max_set_size)


@lru_cache(maxsize=4)
def _cached_plan(domain_json: str, chunk_size: int, max_set_size: int) -> Plan:
    return build_plan(domain_from_config(json.loads(domain_json)), chunk_size, max_set_size)


def plan_from_config(config: dict) -> Plan:
    """The plan of a configuration (its ``domain`` and ``run`` sections).

    Cached on those sections' content: Snakemake asks for the plan many times while parsing.
    """
    run = config.get("run") or {}
    return _cached_plan(
        json.dumps(config["domain"], sort_keys=True, default=str),
        int(run.get("chunk_size", DEFAULT_CHUNK_SIZE)),
        int(run.get("max_set_size", DEFAULT_MAX_SET_SIZE)),
    )


# --- work lists ---------------------------------------------------------------------------


def reach_item(reach_id: int) -> dict:
    continent = contract.continent_of(reach_id)
    return {
        "reach_id": int(reach_id),
        "sword": contract.sword_name(continent),
        "swot": contract.swot_name(reach_id),
        "sos": contract.sos_priors_name(continent),
    }


def basin_item(basin_id: int, reach_ids: list[int]) -> dict:
    continent = contract.continent_of(reach_ids[0]) if reach_ids else ""
    return {
        "basin_id": int(basin_id),
        "reach_id": [int(r) for r in reach_ids],
        "sword": contract.sword_name(continent),
        "sos": contract.sos_priors_name(continent),
    }


def _lists(reach_ids, sets, basins: dict[int, list[int]], continents) -> dict[str, list]:
    items = {rid: reach_item(rid) for rid in reach_ids}
    return {
        "reaches.json": list(items.values()),
        "sets.json": [[items[r] for r in s] for s in sets],
        "basin.json": [basin_item(b, rids) for b, rids in basins.items()],
        "continent.json": [{c: list(contract.CONTINENTS[c])} for c in continents],
    }


def worklists(plan: Plan, unit_id: str) -> dict[str, list]:
    """The four work lists of a chunk or a continent, in the contract's format."""
    return _lists(
        plan.reach_ids(unit_id),
        plan.sets(unit_id),
        plan.basins(unit_id),
        [plan.continent_of(unit_id)],
    )


def global_worklists(plan: Plan) -> dict[str, list]:
    """The work lists of the whole domain (split basins are whole again in basin.json)."""
    reach_ids = sorted(r for chunk in plan.chunks for r in chunk.reach_ids)
    basins: dict[int, list[int]] = {}
    for rid in reach_ids:
        basins.setdefault(rid // BASIN_DIVISOR, []).append(rid)
    sets = [s for chunk in plan.chunks for s in chunk.sets]
    return _lists(reach_ids, sets, basins, plan.continents)


def _write_lists(lists: dict[str, list], directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, items in lists.items():
        path = directory / name
        # One item per line: readable, diff-able, and still fast for 250,000 reaches.
        text = "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n" if items else "[]\n"
        with contract.atomic_output(path) as tmp:
            tmp.write_text(text)
        written.append(path)
    return written


def write_worklists(plan: Plan, unit_id: str, directory: Path) -> list[Path]:
    """Write the unit's reaches.json, sets.json, basin.json, continent.json into ``directory``."""
    return _write_lists(worklists(plan, unit_id), directory)


# --- the `confluence plan` command ----------------------------------------------------------


def module_table(plan: Plan, modules: dict) -> list[dict]:
    """Per module: its units (jobs), items in total and the largest array."""
    rows = []
    for name, module in modules.items():
        scope = module.get("scope", "reach")
        units = plan.unit_ids(scope)
        counts = [plan.items(u, scope) for u in units]
        rows.append(
            {
                "module": name,
                "stage": module.get("stage", name),
                "scope": scope,
                "jobs": len(units),
                "items": sum(counts),
                "largest_array": max(counts, default=0),
            }
        )
    return rows


def _basin_range(chunk: Chunk) -> str:
    if chunk.part[0]:
        return f"{chunk.basin_ids[0]} part {chunk.part[0]}/{chunk.part[1]}"
    if len(chunk.basin_ids) == 1:
        return str(chunk.basin_ids[0])
    return f"{chunk.basin_ids[0]}..{chunk.basin_ids[-1]} ({len(chunk.basin_ids)})"


def format_plan(plan: Plan, modules: dict, shown_per_continent: int = 6) -> str:
    """A readable plan; continents with many chunks show the first and last few."""
    lines = [
        f"Plan: {plan.reach_count} reaches, {plan.set_count} inversion sets, "
        f"{len(plan.chunks)} chunks (chunk_size {plan.chunk_size}, max_set_size "
        f"{plan.max_set_size}), {len(plan.continents)} continents",
        "",
    ]
    for c in plan.continents:
        chunks = plan.chunks_of(c)
        sizes = [len(chunk.reach_ids) for chunk in chunks]
        split = sorted({chunk.basin_ids[0] for chunk in chunks if chunk.part[0]})
        lines.append(
            f"{c}: {plan.items(c, 'basin')} basins, {plan.items(c, 'reach')} reaches, "
            f"{plan.items(c, 'set')} sets, {len(chunks)} chunks (reaches per chunk: min "
            f"{min(sizes)}, median {statistics.median(sizes):g}, max {max(sizes)})"
            + (f", split basins: {len(split)}" if split else "")
        )
        lines.append(f"  {'chunk':<18} {'basins':<26} {'reaches':>7} {'sets':>6}")
        half = shown_per_continent // 2
        hidden = len(chunks) - shown_per_continent
        for i, chunk in enumerate(chunks):
            if hidden > 0 and i == half:
                lines.append(f"  ... {hidden} more chunks ...")
            if hidden > 0 and half <= i < len(chunks) - half:
                continue
            lines.append(
                f"  {chunk.id:<18} {_basin_range(chunk):<26} {len(chunk.reach_ids):>7} "
                f"{len(chunk.sets):>6}"
            )
        lines.append("")
    if modules:
        rows = module_table(plan, modules)
        header = ("module", "stage", "scope", "jobs", "items", "largest array")
        lines.append("{:<22} {:<22} {:<10} {:>6} {:>8} {:>14}".format(*header))
        for row in rows:
            lines.append(
                f"{row['module']:<22} {row['stage']:<22} {row['scope']:<10} {row['jobs']:>6} "
                f"{row['items']:>8} {row['largest_array']:>14}"
            )
        lines.append(
            f"{'total':<56} {sum(r['jobs'] for r in rows):>6} {sum(r['items'] for r in rows):>8}"
        )
    return "\n".join(lines)


def cli(args) -> int:
    """``confluence plan [--configfile F ...] [--write DIR] [--json]``."""
    from confluence import config as config_mod

    try:
        config = config_mod.load(args.configfile)
        the_plan = plan_from_config(config)
    except (config_mod.ConfigError, ValueError) as err:
        print(f"confluence plan: {err}", file=sys.stderr)
        return 2
    # FLPE modules that flpe.algorithms leaves out do not run.
    algorithms = set((config.get("flpe") or {}).get("algorithms") or [])
    modules = {
        name: module
        for name, module in (config.get("modules") or {}).items()
        if module.get("stage") != "flpe" or name in algorithms
    }
    if args.json:
        doc = the_plan.summary()
        doc["modules"] = module_table(the_plan, modules)
        print(json.dumps(doc, indent=1))
    else:
        print(format_plan(the_plan, modules))
    if args.write:
        directory = Path(args.write)
        _write_lists(global_worklists(the_plan), directory)
        for unit in the_plan.unit_ids():
            write_worklists(the_plan, unit, directory / unit)
        print(
            f"wrote the global work lists and those of {len(the_plan.unit_ids())} units to "
            f"{directory}",
            file=sys.stderr,
        )
    return 0
