"""Run one module over one chunk locally, as AWS Batch would run its array job.

Each item runs with the environment of an array child (``AWS_BATCH_JOB_ARRAY_INDEX``,
the mount tree under ``CONFLUENCE_MOUNT_ROOT``), in a process pool. Outputs are checked
against the module's declared patterns, recorded with size and checksum, and the chunk's
sentinel is written only when the share of failures is within the module's tolerance.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from glob import glob
from multiprocessing import get_context
from pathlib import Path

from confluence import contract, manifest, mounts
from confluence.contract import FAILED, OK, SKIPPED

#: How often the state file is rewritten while items complete, so a killed job loses little.
STATE_INTERVAL_SECONDS = 2.0


@dataclass
class Item:
    index: int
    id: str
    reach_ids: list[int]
    #: Placeholder values for the module's output patterns.
    fields: list[dict]


def items_of(scope: str, worklist: list) -> list[Item]:
    """The items of a work list with their IDs, reach IDs and output-pattern fields."""
    items = []
    for index, entry in enumerate(worklist):
        if scope == "reach":
            rid = int(entry["reach_id"])
            items.append(Item(index, str(rid), [rid], [{"reach_id": rid}]))
        elif scope == "set":
            rids = [int(r["reach_id"]) for r in entry]
            sid = contract.set_id(rids)
            items.append(Item(index, sid, rids, [{"set_id": sid}]))
        elif scope == "basin":
            rids = [int(r) for r in entry["reach_id"]]
            basin = int(entry["basin_id"])
            fields = [{"basin_id": basin, "reach_id": r} for r in rids]
            items.append(Item(index, str(basin), rids, fields))
        elif scope == "continent":
            (code,) = entry.keys()
            items.append(Item(index, code, [], [{"continent": code}]))
        else:
            raise ValueError(f"unknown scope {scope!r}")
    return items


def arguments(module: dict, unit: str, run_type: str) -> list[str]:
    """The module's argument template, filled for one chunk."""
    values = {
        "worklist": f"worklists/{unit}/{module['worklist']}",
        "run_type": run_type,
        "unit": unit,
    }
    return [arg.format(**values) for arg in module["arguments"]]


def _run_item(name: str, index: int, args: list[str], root: str) -> dict:
    """One array child: the module's CLI with the child's environment, in this process."""
    from confluence import cli

    os.environ[contract.ARRAY_INDEX_ENV] = str(index)
    os.environ[contract.MOUNT_ROOT_ENV] = root
    captured = io.StringIO()
    start = manifest.now()
    began = time.perf_counter()
    try:
        with redirect_stderr(captured), redirect_stdout(captured):
            code = cli.main(["module", name, *args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception:  # a bug in a module must fail its item, not the chunk
        captured.write(traceback.format_exc())
        code = 1
    return {
        "exit_code": code,
        "log": captured.getvalue(),
        "start": start,
        "end": manifest.now(),
        "seconds": round(time.perf_counter() - began, 4),
    }


def _message(name: str, result: dict) -> str:
    """The item's last word: the module's one-line reason, without the CLI's prefix."""
    lines = [line for line in result["log"].splitlines() if line.strip()]
    if not lines:
        return f"exit code {result['exit_code']}"
    for prefix in (f"{name}: failed: ", f"{name}: skipped: "):
        if lines[-1].startswith(prefix):
            return lines[-1][len(prefix) :]
    return lines[-1]


def expected_outputs(
    module: dict, item: Item, efs: Path, optional_reaches: set[int]
) -> tuple[list[Path], list[str]]:
    """Files an item wrote, and the required ones that are missing.

    Patterns with ``*`` are optional globs. A required file of a reach that failed upstream
    is optional too: a basin module cannot integrate a reach that has no estimates.
    """
    found, missing = [], []
    for pattern in module["outputs"]:
        for fields in item.fields:
            path = mounts.to_local(pattern.format(**fields), module["mounts"], efs)
            if "*" in pattern:
                found.extend(Path(p) for p in sorted(glob(str(path))))
            elif path.is_file():
                found.append(path)
            elif fields.get("reach_id") not in optional_reaches:
                missing.append(pattern.format(**fields))
    return list(dict.fromkeys(found)), missing


@dataclass
class ChunkPlan:
    """What one module must do for one chunk: its items, which of them an earlier attempt
    already finished (``reusable``), and everything that decides their results."""

    name: str
    unit: str
    module: dict
    run_type: str
    worklist_rel: str  # relative to the input file system
    items: list[Item]
    args: list[str]
    digest: str
    failed_upstream: set[int]
    reusable: dict[int, dict]
    started: str

    @property
    def todo(self) -> list[Item]:
        return [item for item in self.items if item.index not in self.reusable]

    def to_json(self) -> dict:
        """The plan as JSON, for a job that finishes the chunk elsewhere (finish-chunk)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "module": self.module,
            "run_type": self.run_type,
            "worklist_rel": self.worklist_rel,
            "args": self.args,
            "digest": self.digest,
            "failed_upstream": sorted(self.failed_upstream),
            "reusable": list(self.reusable.values()),
            "started": self.started,
        }

    @classmethod
    def from_json(cls, doc: dict, efs: Path) -> ChunkPlan:
        worklist = contract.read_worklist(Path(efs) / "input" / doc["worklist_rel"])
        return cls(
            doc["name"],
            doc["unit"],
            doc["module"],
            doc["run_type"],
            doc["worklist_rel"],
            items_of(doc["module"]["scope"], worklist),
            doc["args"],
            doc["digest"],
            set(doc["failed_upstream"]),
            {rec["index"]: rec for rec in doc["reusable"]},
            doc["started"],
        )


def plan_chunk(
    name: str,
    unit: str,
    module: dict,
    efs: Path,
    state: Path,
    upstream: list[Path] = (),
    run_type: str = "constrained",
) -> ChunkPlan:
    efs = Path(efs)
    worklist_rel = f"worklists/{unit}/{module['worklist']}"
    worklist = contract.read_worklist(efs / "input" / worklist_rel)
    upstream_manifests = [manifest.load(Path(p)) or {} for p in upstream]
    digest = manifest.fingerprint(
        name,
        module,
        run_type,
        worklist,
        [manifest.upstream_digest(m) for m in upstream_manifests],
    )
    previous = manifest.load(Path(state))
    reusable = {}
    unfinished = previous and (
        not previous.get("all_ok") or not previous.get("published", {}).get("ok", True)
    )
    if unfinished and previous.get("fingerprint") == digest:
        # Same inputs as an attempt that had failures: keep what succeeded, if still intact.
        for rec in previous["items"]:
            if rec["status"] == OK and all(
                manifest.record_still_valid(o, efs) for o in rec["outputs"]
            ):
                reusable[rec["index"]] = rec
    return ChunkPlan(
        name,
        unit,
        module,
        run_type,
        worklist_rel,
        items_of(module["scope"], worklist),
        arguments(module, unit, run_type),
        digest,
        set().union(*(manifest.failed_reaches(m) for m in upstream_manifests)),
        reusable,
        manifest.now(),
    )


def item_record(plan: ChunkPlan, item: Item, result: dict, efs: Path) -> dict:
    """An item's manifest record from its exit code, log and the outputs found on disk."""
    if result["exit_code"] == 0:
        outputs, missing = expected_outputs(plan.module, item, efs, plan.failed_upstream)
        status, message = OK, ""
        if missing:
            status = FAILED
            message = f"exited 0 but did not write {', '.join(missing)}"
    elif result["exit_code"] == contract.EXIT_UPSTREAM_MISSING:
        outputs, status, message = [], SKIPPED, _message(plan.name, result)
    else:
        outputs, status, message = [], FAILED, _message(plan.name, result)
    return {
        "index": item.index,
        "id": item.id,
        "reach_ids": item.reach_ids,
        "status": status,
        "message": message,
        "exit_code": result["exit_code"],
        "outputs": [manifest.file_record(p, efs) for p in outputs],
        "start": result["start"],
        "end": result["end"],
        "seconds": result["seconds"],
    }


def chunk_document(
    plan: ChunkPlan, records: dict[int, dict], finished: bool, executor: str, job_ids: list
) -> dict:
    ordered = [records[i.index] for i in plan.items if i.index in records]
    module = plan.module
    return {
        "schema": manifest.SCHEMA_VERSION,
        "module": plan.name,
        "unit": plan.unit,
        "scope": module["scope"],
        "stage": module.get("stage"),
        "image": module.get("image"),
        "worklist": plan.worklist_rel,
        "arguments": plan.args,
        "run_type": plan.run_type,
        "fingerprint": plan.digest,
        "code_version": manifest.code_version(),
        "executor": executor,
        "job_ids": job_ids,
        "started": plan.started,
        "finished": manifest.now() if finished else None,
        "counts": manifest.counts(ordered),
        "failed_percent": round(manifest.failed_percent(ordered), 3),
        "tolerated_failure_percent": module.get("tolerated_failure_percent", 0),
        "all_ok": finished and all(r["status"] == OK for r in ordered),
        "items": ordered,
    }


def log_item(plan: ChunkPlan, record: dict, done: int, total: int, log_text: str, log) -> None:
    message = record["message"]
    print(
        f"[{done}/{total}] {plan.name} item {record['index']} ({record['id']}): "
        f"{record['status']}"
        + (f": {message}" if message else "")
        + f" ({record['seconds']:.2f} s)",
        file=log,
        flush=True,
    )
    if record["status"] != OK and len(log_text.strip().splitlines()) > 1:
        tail = "\n".join(log_text.rstrip().splitlines()[-15:])
        print("    " + tail.replace("\n", "\n    "), file=log, flush=True)


def tolerated(doc: dict) -> bool:
    return doc["failed_percent"] <= doc["tolerated_failure_percent"]


def report(doc: dict, log) -> None:
    tally = doc["counts"]
    print(
        f"{doc['module']} {doc['unit']}: {tally[OK]} ok, {tally[FAILED]} failed, "
        f"{tally[SKIPPED]} skipped (upstream failed) of {tally['total']}; failed "
        f"{doc['failed_percent']:.1f} % (tolerated {doc['tolerated_failure_percent']} %)",
        file=log,
        flush=True,
    )


def conclude(doc: dict, sentinel: Path, state: Path, log) -> bool:
    """Write the state, and the sentinel when the chunk counts as done (failures within the
    module's tolerance and its publication, if any, complete)."""
    manifest.write(state, doc)
    done = tolerated(doc) and doc.get("published", {}).get("ok", True)
    if done:
        manifest.write(sentinel, doc)
    else:
        failed = [r["id"] for r in doc["items"] if r["status"] == FAILED]
        reason = (
            f"failed items: {', '.join(failed)}"
            if not tolerated(doc)
            else "the publication of its outputs failed"
        )
        print(
            f"{doc['module']} {doc['unit']}: not done; {reason}. The next run of this job "
            f"repeats only the items that did not succeed (state kept in {state}).",
            file=log,
            flush=True,
        )
    return done


def run_chunk(
    name: str,
    unit: str,
    module: dict,
    efs: Path,
    sentinel: Path,
    state: Path,
    upstream: list[Path] = (),
    run_type: str = "constrained",
    workers: int = 1,
    publish: str | None = None,
    log=sys.stdout,
) -> bool:
    """Run every item that still needs running; True when the chunk counts as done."""
    efs = Path(efs)
    plan = plan_chunk(name, unit, module, efs, state, upstream, run_type)
    records: dict[int, dict] = dict(plan.reusable)
    todo = plan.todo
    print(
        f"{name} {unit}: {len(plan.items)} items, {len(plan.reusable)} kept from the previous "
        f"attempt, {len(todo)} to run with {max(1, min(workers, len(todo)))} workers",
        file=log,
        flush=True,
    )
    job_ids = [f"local:{os.getpid()}"]

    # Import the module's code once here, so forked workers start with it loaded.
    from confluence.modules import REGISTRY

    importlib.import_module(REGISTRY[name].split(":")[0])
    with tempfile.TemporaryDirectory(prefix=f"confluence-{name}-") as job_dir:
        root = str(mounts.build_mount_root(module["mounts"], efs, Path(job_dir)))
        last_state = time.monotonic()
        # Fork keeps the imported science in every worker; each item is one array child,
        # so a module's process-wide state (environment, globals) never leaks into the runner.
        with ProcessPoolExecutor(
            max(1, min(workers, len(todo))), mp_context=get_context("fork")
        ) as pool:
            futures = {
                pool.submit(_run_item, name, item.index, [*plan.args], root): item for item in todo
            }
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    # The worker died (out of memory, a crash in native code): this item and
                    # those queued behind it fail; what already finished stays recorded.
                    result = {
                        "exit_code": 1,
                        "log": "the worker process died (killed, or crashed in native code)",
                        "start": plan.started,
                        "end": manifest.now(),
                        "seconds": 0.0,
                    }
                item = futures[future]
                records[item.index] = item_record(plan, item, result, efs)
                done = len(records) - len(plan.reusable)
                log_item(plan, records[item.index], done, len(todo), result["log"], log)
                if time.monotonic() - last_state > STATE_INTERVAL_SECONDS:
                    manifest.write(state, chunk_document(plan, records, False, "local", job_ids))
                    last_state = time.monotonic()

    doc = chunk_document(plan, records, True, "local", job_ids)
    manifest.write(state, doc)
    report(doc, log)
    if tolerated(doc) and publish:
        publish_outputs(doc, efs, publish, log)
    return conclude(doc, sentinel, state, log)


def publish_outputs(doc: dict, efs: Path, destination: str, log) -> bool:
    """Copy exactly the files the manifest lists to ``destination`` and record where.

    Runs only once the chunk counts as done, so nothing half-finished is published; a
    failed publication fails the job, and its rerun (incremental) publishes what is missing.
    """
    from confluence.sync import sync

    files = [o["path"] for item in doc["items"] for o in item["outputs"]]
    result = sync(str(efs), destination, files=files, progress=False)
    doc["published"] = {
        "destination": destination,
        "ok": result.ok,
        "files": result.entries,
        "failed": [list(failure) for failure in result.failed],
    }
    print(result.summary(), file=log, flush=True)
    for path, reason in result.failed:
        print(f"    publication failed: {path}: {reason}", file=log, flush=True)
    return result.ok


def cli(args) -> int:
    module = json.loads(args.module_config)
    done = run_chunk(
        args.module,
        args.unit,
        module,
        Path(args.efs),
        Path(args.sentinel),
        Path(args.state),
        [Path(p) for p in args.upstream],
        args.run_type,
        args.workers,
        args.publish,
    )
    return 0 if done else 1
