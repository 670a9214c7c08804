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
    worklist_path = efs / "input" / "worklists" / unit / module["worklist"]
    worklist = contract.read_worklist(worklist_path)
    items = items_of(module["scope"], worklist)
    upstream_manifests = [manifest.load(Path(p)) or {} for p in upstream]
    failed_upstream = set().union(*(manifest.failed_reaches(m) for m in upstream_manifests))
    args = arguments(module, unit, run_type)
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

    started = manifest.now()
    records: dict[int, dict] = dict(reusable)
    todo = [item for item in items if item.index not in reusable]
    print(
        f"{name} {unit}: {len(items)} items, {len(reusable)} kept from the previous attempt, "
        f"{len(todo)} to run with {max(1, min(workers, len(todo)))} workers",
        file=log,
        flush=True,
    )

    def document(finished: bool) -> dict:
        ordered = [records[i.index] for i in items if i.index in records]
        doc = {
            "schema": manifest.SCHEMA_VERSION,
            "module": name,
            "unit": unit,
            "scope": module["scope"],
            "stage": module.get("stage"),
            "image": module.get("image"),
            "worklist": str(worklist_path.relative_to(efs / "input")),
            "arguments": args,
            "run_type": run_type,
            "fingerprint": digest,
            "code_version": manifest.code_version(),
            "executor": "local",
            "job_ids": [f"local:{os.getpid()}"],
            "started": started,
            "finished": manifest.now() if finished else None,
            "counts": manifest.counts(ordered),
            "failed_percent": round(manifest.failed_percent(ordered), 3),
            "tolerated_failure_percent": module.get("tolerated_failure_percent", 0),
            "all_ok": finished and all(r["status"] == OK for r in ordered),
            "items": ordered,
        }
        return doc

    def record(item: Item, result: dict) -> None:
        if result["exit_code"] == 0:
            outputs, missing = expected_outputs(module, item, efs, failed_upstream)
            status, message = OK, ""
            if missing:
                status = FAILED
                message = f"exited 0 but did not write {', '.join(missing)}"
        elif result["exit_code"] == contract.EXIT_UPSTREAM_MISSING:
            outputs, status, message = [], SKIPPED, _message(name, result)
        else:
            outputs, status, message = [], FAILED, _message(name, result)
        records[item.index] = {
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
        done = len(records) - len(reusable)
        print(
            f"[{done}/{len(todo)}] {name} item {item.index} ({item.id}): {status}"
            + (f": {message}" if message else "")
            + f" ({result['seconds']:.2f} s)",
            file=log,
            flush=True,
        )
        if status != OK and len(result["log"].strip().splitlines()) > 1:
            tail = "\n".join(result["log"].rstrip().splitlines()[-15:])
            print("    " + tail.replace("\n", "\n    "), file=log, flush=True)

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
                pool.submit(_run_item, name, item.index, [*args], root): item for item in todo
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
                        "start": started,
                        "end": manifest.now(),
                        "seconds": 0.0,
                    }
                record(futures[future], result)
                if time.monotonic() - last_state > STATE_INTERVAL_SECONDS:
                    manifest.write(state, document(False))
                    last_state = time.monotonic()

    doc = document(True)
    manifest.write(state, doc)
    tolerated = doc["failed_percent"] <= doc["tolerated_failure_percent"]
    tally = doc["counts"]
    print(
        f"{name} {unit}: {tally[OK]} ok, {tally[FAILED]} failed, {tally[SKIPPED]} skipped "
        f"(upstream failed) of {tally['total']}; failed {doc['failed_percent']:.1f} % "
        f"(tolerated {doc['tolerated_failure_percent']} %)",
        file=log,
        flush=True,
    )
    if tolerated and publish:
        tolerated = publish_outputs(doc, efs, publish, log)
        manifest.write(state, doc)
    if tolerated:
        manifest.write(sentinel, doc)
    else:
        failed = [r["id"] for r in doc["items"] if r["status"] == FAILED]
        print(
            f"{name} {unit}: too many failures; failed items: {', '.join(failed)}. "
            f"The next run of this job repeats only the items that did not succeed "
            f"(state kept in {state}).",
            file=log,
            flush=True,
        )
    return tolerated


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
