"""The domain: the reaches of interest and their downstream links (SWORD-style topology).

Reach IDs are 11 digits, ``CBBBRRRRRRT``: C the continent region, CBBB the basin, RRRRRR the
reach number in the basin, T the type (1 = river). The domain is either synthetic (a random
but seed-deterministic river tree per basin, built with vectorised numpy because Snakemake
builds it while parsing) or read from SWORD v16 NetCDF files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from confluence import contract

#: 10**7: reach_id // BASIN_DIVISOR is the 4-digit basin ID.
BASIN_DIVISOR = 10**7
#: The last digit of a SWORD reach ID is its type; 1 = river.
RIVER_TYPE = 1
#: Largest reach number RRRRRR of the ID layout.
MAX_REACHES_PER_BASIN = 999_999
#: Probability that a synthetic reach continues the river of the reach just before it
#: (otherwise it starts a tributary joining an earlier reach): long main stems, many
#: confluences, as in SWORD's dendritic networks.
CONTINUE_RIVER = 0.8
#: Synthetic reach lengths: SWORD reaches are mostly 10-20 km long.
MEDIAN_REACH_LENGTH_M = 12_000.0


@dataclass(frozen=True, eq=False)
class Domain:
    """Reaches (ascending IDs) with their downstream neighbour and length.

    ``reach_dn`` is 0 at an outlet; otherwise it is a reach of the domain in the same basin
    (links leaving the domain or the basin are cut to 0 when the domain is built).
    """

    reach_id: np.ndarray
    reach_dn: np.ndarray
    reach_length: np.ndarray

    def __post_init__(self) -> None:
        for name, dtype in (("reach_id", np.int64), ("reach_dn", np.int64)):
            value = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            object.__setattr__(self, name, value)
        object.__setattr__(
            self, "reach_length", np.ascontiguousarray(self.reach_length, dtype=np.float64)
        )
        n = self.reach_id.size
        if self.reach_dn.shape != (n,) or self.reach_length.shape != (n,):
            raise ValueError(
                f"domain arrays differ in shape: reach_id {self.reach_id.shape}, "
                f"reach_dn {self.reach_dn.shape}, reach_length {self.reach_length.shape}"
            )
        if n and (self.reach_id.min() < 10**10 or self.reach_id.max() >= 10**11):
            bad = self.reach_id[(self.reach_id < 10**10) | (self.reach_id >= 10**11)][0]
            raise ValueError(f"reach ID {bad} is not an 11-digit SWORD ID (CBBBRRRRRRT)")
        if n > 1 and not np.all(np.diff(self.reach_id) > 0):
            i = int(np.argmax(np.diff(self.reach_id) <= 0))
            raise ValueError(
                f"reach IDs must be ascending and unique; {self.reach_id[i]} is followed by "
                f"{self.reach_id[i + 1]}"
            )
        linked = self.reach_dn != 0
        dn_index = self.downstream_index
        lost = linked & (dn_index < 0)
        if lost.any():
            i = int(np.argmax(lost))
            raise ValueError(
                f"reach {self.reach_id[i]}: downstream reach {self.reach_dn[i]} is not in the "
                "domain; cut the link to 0 (an outlet of the domain) or add the reach"
            )
        cross = linked & (self.reach_dn // BASIN_DIVISOR != self.reach_id // BASIN_DIVISOR)
        if cross.any():
            i = int(np.argmax(cross))
            raise ValueError(
                f"reach {self.reach_id[i]}: downstream reach {self.reach_dn[i]} is in another "
                "basin; links between basins must be 0"
            )
        if (self.reach_dn == self.reach_id).any():
            i = int(np.argmax(self.reach_dn == self.reach_id))
            raise ValueError(f"reach {self.reach_id[i]} is its own downstream neighbour")

    def __len__(self) -> int:
        return int(self.reach_id.size)

    @cached_property
    def downstream_index(self) -> np.ndarray:
        """Index of each reach's downstream neighbour in the arrays, -1 at an outlet."""
        idx = np.searchsorted(self.reach_id, self.reach_dn)
        idx = np.minimum(idx, max(len(self) - 1, 0))
        found = (self.reach_dn != 0) & (self.reach_id[idx] == self.reach_dn) if len(self) else idx
        return np.where(found, idx, -1).astype(np.int64)

    @cached_property
    def upstream_count(self) -> np.ndarray:
        """Number of reaches of the domain draining directly into each reach."""
        dn = self.downstream_index
        return np.bincount(dn[dn >= 0], minlength=len(self)).astype(np.int64)

    @cached_property
    def basin_id(self) -> np.ndarray:
        """Basin ID (first 4 digits) of each reach."""
        return self.reach_id // BASIN_DIVISOR

    @cached_property
    def continent_digit(self) -> np.ndarray:
        return self.reach_id // 10**10

    @cached_property
    def continent(self) -> np.ndarray:
        """Continent code of each reach (array of str)."""
        table = np.array([contract.DIGIT_TO_CONTINENT.get(d, "") for d in range(10)], dtype="<U2")
        return table[self.continent_digit]

    @cached_property
    def continents(self) -> list[str]:
        """Continent codes present, in the order of contract.CONTINENTS (continent.json)."""
        present = {contract.DIGIT_TO_CONTINENT[int(d)] for d in np.unique(self.continent_digit)}
        return [c for c in contract.CONTINENTS if c in present]

    @cached_property
    def basins(self) -> np.ndarray:
        """Basin IDs present, ascending."""
        return np.unique(self.basin_id)

    @cached_property
    def basin_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(basin IDs, start, stop): reaches of basin k are the slice start[k]:stop[k]."""
        ids = self.basin_id
        if not len(self):
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        stops = np.r_[starts[1:], len(self)]
        return ids[starts], starts, stops

    def continent_slice(self, continent: str) -> slice:
        """The contiguous index range of a continent's reaches (IDs sort by continent digit)."""
        digits = contract.CONTINENTS[continent]
        lo = np.searchsorted(self.reach_id, min(digits) * 10**10)
        hi = np.searchsorted(self.reach_id, (max(digits) + 1) * 10**10)
        return slice(int(lo), int(hi))

    def subset(self, mask: np.ndarray) -> Domain:
        """The reaches where ``mask`` is true; links to dropped reaches become outlets (0)."""
        mask = np.asarray(mask, dtype=bool)
        keep_dn = self.downstream_index >= 0
        keep_dn[keep_dn] = mask[self.downstream_index[keep_dn]]
        dn = np.where(keep_dn, self.reach_dn, 0)
        return Domain(self.reach_id[mask], dn[mask], self.reach_length[mask])


def _basin_codes(continent: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct 4-digit basin IDs for a continent, ascending.

    Drawn from the first leading digit's 999 codes (C001..C999); a continent with more
    basins than that continues into its next leading digit.
    """
    digits = contract.CONTINENTS[continent]
    pool = np.concatenate([d * 1000 + np.arange(1, 1000) for d in digits])
    first = pool[:999]
    if count <= first.size:
        return np.sort(rng.choice(first, size=count, replace=False))
    if count > pool.size:
        raise ValueError(
            f"domain.continents.{continent}.basins: {count} basins do not fit the basin IDs of "
            f"leading digits {digits} (at most {pool.size})"
        )
    return pool[:count]


def _synthetic_continent(
    continent: str, basins: int, size_range: tuple[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One continent's reaches: IDs, downstream IDs, lengths."""
    lo, hi = int(size_range[0]), int(size_range[1])
    if not 1 <= lo <= hi <= MAX_REACHES_PER_BASIN:
        raise ValueError(
            f"domain.continents.{continent}.reaches_per_basin: [{lo}, {hi}] must satisfy "
            f"1 <= min <= max <= {MAX_REACHES_PER_BASIN}"
        )
    # One generator per continent, keyed by its position in the contract, so changing one
    # continent's settings leaves every other continent's reaches (and chunk IDs) unchanged.
    order = list(contract.CONTINENTS).index(continent)
    rng = np.random.default_rng([int(seed), order])
    codes = _basin_codes(continent, basins, rng)
    # Log-uniform basin sizes: many small basins, a few large ones, as in SWORD.
    sizes = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1), size=basins))).astype(np.int64)
    sizes = np.clip(sizes, lo, hi)
    total = int(sizes.sum())
    starts = np.cumsum(sizes) - sizes
    basin_of_reach = np.repeat(np.arange(basins), sizes)
    local = np.arange(total, dtype=np.int64) - starts[basin_of_reach]

    # Reach 0 of each basin is its outlet; reach i > 0 drains into i - 1 (continuing a river
    # upstream) or into a random earlier reach (a tributary joining there). Parents always
    # have smaller local numbers, so every basin is a tree with one outlet.
    cont = rng.random(total) < CONTINUE_RIVER
    jump = np.floor(rng.random(total) * local).astype(np.int64)
    parent = np.where(cont, local - 1, jump)
    parent[local == 0] = -1

    base = codes[basin_of_reach] * BASIN_DIVISOR + RIVER_TYPE
    reach_id = base + (local + 1) * 10
    reach_dn = np.where(parent >= 0, base + (parent + 1) * 10, 0)
    length = MEDIAN_REACH_LENGTH_M * np.exp(0.4 * rng.standard_normal(total))
    length = np.clip(length, 2_000.0, 40_000.0).round(1)
    return reach_id, reach_dn, length


def synthetic_topology(spec: dict) -> Domain:
    """A synthetic domain from the config's ``domain`` section (kind "synthetic").

    ``spec["continents"]``: {code: {"basins": int, "reaches_per_basin": [min, max]}}.
    Deterministic from ``spec["seed"]``; each continent independent of the others.
    """
    continents = spec.get("continents") or {}
    unknown = sorted(set(continents) - set(contract.CONTINENTS))
    if unknown:
        raise ValueError(
            f"domain.continents: unknown continent code(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(contract.CONTINENTS)}"
        )
    seed = int(spec.get("seed", 0))
    parts = []
    for code in contract.CONTINENTS:  # contract order = ascending leading digit = ID order
        if code not in continents:
            continue
        entry = continents[code]
        parts.append(
            _synthetic_continent(code, int(entry["basins"]), entry["reaches_per_basin"], seed)
        )
    if not parts:
        raise ValueError("domain.continents is empty: name at least one continent")
    ids, dns, lengths = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Domain(ids, dns, lengths)


def _read_reach_list(path: str | Path) -> np.ndarray:
    """Reach IDs of interest: a JSON list of IDs, or of reach objects as in reaches.json."""
    try:
        with open(path) as f:
            items = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"domain.reaches: file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"domain.reaches: {path} is not valid JSON: {err}") from None
    if not isinstance(items, list):
        raise ValueError(f"domain.reaches: {path} must hold a JSON list of reach IDs")
    try:
        ids = [int(it["reach_id"] if isinstance(it, dict) else it) for it in items]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"domain.reaches: {path} must list reach IDs (or objects with 'reach_id'): {err}"
        ) from None
    return np.unique(np.asarray(ids, dtype=np.int64))


def sword_topology(spec: dict) -> Domain:
    """The domain of SWORD v16 files ``{c}_sword_v16.nc`` in ``spec["sword_dir"]``.

    Reads ``reaches/reach_id``, the first row of ``reaches/rch_id_dn`` (SWORD lists up to
    four downstream neighbours; the first is the main one) and ``reaches/reach_length``.
    Links to another basin or outside the domain become outlets. ``spec["reaches"]``, if set,
    names a JSON list of the reach IDs of interest.
    """
    import netCDF4  # only needed for real SWORD input; keeps the synthetic path import-light

    sword_dir = Path(spec.get("sword_dir") or "")
    if not sword_dir.is_dir():
        raise ValueError(f"domain.sword_dir: {sword_dir} is not a directory")
    files = [
        (c, sword_dir / contract.sword_name(c))
        for c in contract.CONTINENTS
        if (sword_dir / contract.sword_name(c)).exists()
    ]
    if not files:
        names = ", ".join(contract.sword_name(c) for c in contract.CONTINENTS)
        raise ValueError(f"domain.sword_dir: {sword_dir} holds none of {names}")
    ids, dns, lengths = [], [], []
    for _, path in files:
        with netCDF4.Dataset(path) as ds:
            try:
                group = ds["reaches"]
                rid = np.asarray(group["reach_id"][:], dtype=np.int64)
                dn_var = group["rch_id_dn"]
                dn = np.asarray(dn_var[0, :] if dn_var.ndim == 2 else dn_var[:], dtype=np.int64)
                length = np.asarray(group["reach_length"][:], dtype=np.float64)
            except (KeyError, IndexError) as err:
                raise ValueError(
                    f"{path}: not a SWORD file: needs reaches/reach_id, reaches/rch_id_dn and "
                    f"reaches/reach_length ({err})"
                ) from None
        if dn.shape != rid.shape:
            raise ValueError(
                f"{path}: reaches/rch_id_dn has {dn.size} reaches in its first row but "
                f"reaches/reach_id has {rid.size}"
            )
        ids.append(rid)
        dns.append(dn)
        lengths.append(length)
    rid = np.concatenate(ids)
    dn = np.concatenate(dns)
    length = np.concatenate(lengths)
    order = np.argsort(rid, kind="stable")
    rid, dn, length = rid[order], dn[order], length[order]
    if rid.size > 1 and (np.diff(rid) == 0).any():
        dup = rid[1:][np.diff(rid) == 0][0]
        raise ValueError(f"{sword_dir}: reach {dup} appears more than once in the SWORD files")

    keep = np.ones(rid.size, dtype=bool)
    if spec.get("reaches"):
        wanted = _read_reach_list(spec["reaches"])
        pos = np.minimum(np.searchsorted(rid, wanted), max(rid.size - 1, 0))
        missing = wanted[rid[pos] != wanted]
        if missing.size:
            shown = ", ".join(str(r) for r in missing[:5])
            raise ValueError(
                f"domain.reaches: {missing.size} reach(es) of {spec['reaches']} are not in the "
                f"SWORD files of {sword_dir}: {shown}{' ...' if missing.size > 5 else ''}"
            )
        keep[:] = False
        keep[pos] = True

    # Cut links that leave the basin, point at unknown reaches or at the reach itself
    # (SWORD fills missing neighbours with 0).
    pos = np.minimum(np.searchsorted(rid, dn), max(rid.size - 1, 0))
    valid = (
        (dn != 0) & (rid[pos] == dn) & (dn // BASIN_DIVISOR == rid // BASIN_DIVISOR) & (dn != rid)
    )
    dn = np.where(valid, dn, 0)
    full = Domain(rid, dn, length)
    return full if keep.all() else full.subset(keep)


def domain_from_config(domain_spec: dict) -> Domain:
    """The domain described by the config's ``domain`` section (dispatch on ``kind``)."""
    kind = domain_spec.get("kind", "synthetic")
    if kind == "synthetic":
        return synthetic_topology(domain_spec)
    if kind == "sword":
        return sword_topology(domain_spec)
    raise ValueError(f"domain.kind: {kind!r} is not allowed; allowed values: synthetic, sword")
