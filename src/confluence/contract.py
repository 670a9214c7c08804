"""The container contract shared by every module: mounts, indices, file names.

Facts from the Confluence design documents (see ../shared/docs/confluence-contract.md).
Everything a module reads or writes is named here once.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

#: Container path of the mount root; local runs point it elsewhere.
DEFAULT_MOUNT_ROOT = "/mnt/data"
MOUNT_ROOT_ENV = "CONFLUENCE_MOUNT_ROOT"
ARRAY_INDEX_ENV = "AWS_BATCH_JOB_ARRAY_INDEX"
#: ``-i`` values that mean "read AWS_BATCH_JOB_ARRAY_INDEX" (Python/Julia, R containers).
INDEX_FROM_ENV = (-235, -256)

FLOAT_FILL = -999999999999.0
INT_FILL = -999

SWORD_VERSION = 16

#: Continent code -> leading digits of its reach IDs, in the order of continent.json.
CONTINENTS: dict[str, list[int]] = {
    "af": [1],
    "eu": [2],
    "as": [3, 4],
    "oc": [5],
    "sa": [6],
    "na": [7, 8, 9],
}
DIGIT_TO_CONTINENT = {d: c for c, digits in CONTINENTS.items() for d in digits}

#: SWOT time is seconds since this epoch (as in the SWOT products).
SWOT_EPOCH = "2000-01-01T00:00:00"

#: Item statuses recorded in manifests.
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
#: Exit code of a module item whose inputs are missing because an upstream item failed;
#: the runner records it as SKIPPED rather than as a new failure.
EXIT_UPSTREAM_MISSING = 3


class ItemError(Exception):
    """An item (reach, set, basin, continent) cannot be processed; the message says why."""


class UpstreamMissing(ItemError):
    """An input the item needs does not exist, because an upstream item failed or was skipped."""


def continent_of(reach_id: int) -> str:
    return DIGIT_TO_CONTINENT[int(str(int(reach_id))[0])]


def basin_of(reach_id: int) -> int:
    """Basin ID = first 4 digits of the 11-digit reach ID."""
    return int(reach_id) // 10**7


def sword_name(continent: str) -> str:
    return f"{continent}_sword_v{SWORD_VERSION}.nc"


def sos_priors_name(continent: str) -> str:
    return f"{continent}_sword_v{SWORD_VERSION}_SOS_priors.nc"


def sos_results_name(continent: str) -> str:
    return f"{continent}_sword_v{SWORD_VERSION}_SOS_results.nc"


def swot_name(reach_id: int) -> str:
    return f"{int(reach_id)}_SWOT.nc"


def set_id(reach_ids) -> str:
    """Name of an inversion set, as in MetroMan's ``{id1-id2-...}_metroman.nc``."""
    return "-".join(str(int(r)) for r in reach_ids)


def mount_root() -> Path:
    return Path(os.environ.get(MOUNT_ROOT_ENV, DEFAULT_MOUNT_ROOT))


def resolve_index(index: int | None) -> int:
    """The item index of this job: ``-i N``, else AWS_BATCH_JOB_ARRAY_INDEX.

    ``None``, -235 and -256 all mean "take it from the environment", as the
    operational containers do.
    """
    if index is not None and index not in INDEX_FROM_ENV:
        if index < 0:
            raise ValueError(f"index {index} is negative; use -i N with N >= 0, or -235/-256")
        return index
    value = os.environ.get(ARRAY_INDEX_ENV)
    if value is None:
        raise ValueError(
            f"no item index: pass -i N, or set {ARRAY_INDEX_ENV} (AWS Batch sets it "
            "for array children)"
        )
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ARRAY_INDEX_ENV}={value!r} is not an integer") from None


def read_worklist(path: Path) -> list:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ItemError(f"work list {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ItemError(f"work list {path} is not valid JSON: {err}") from None


def read_worklist_item(path: Path, index: int):
    """The item at ``index`` of a work list, with an error naming both when out of range."""
    items = read_worklist(path)
    if not 0 <= index < len(items):
        raise ItemError(f"index {index} is out of range for {path} ({len(items)} items)")
    return items[index]


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; rename it into place only on success.

    A reader never sees a half-written file, and a failed item leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
