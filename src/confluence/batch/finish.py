"""``confluence finish-chunk SPEC``: the publication job of one chunk on AWS Batch.

It runs on the project's image with every file system mounted at ``/mnt/data/<name>``,
after the chunk's items job ended. From the controller's spec (the chunk's plan and each
item's exit code) it checks the outputs each item wrote, records sizes and checksums,
publishes the outputs of every item that succeeded to storage.publish, and writes the
chunk's document beside the spec for the controller, which decides on the sentinel.
"""

from __future__ import annotations

import sys
from pathlib import Path

from confluence import contract, manifest, runner


def finish_chunk(spec_path: Path, efs: Path, log=sys.stdout) -> int:
    spec = manifest.load(spec_path)
    if spec is None:
        print(f"finish-chunk: spec {spec_path} is missing or not JSON", file=log)
        return 2
    plan = runner.ChunkPlan.from_json(spec["plan"], efs)
    records = dict(plan.reusable)
    todo = [item for item in plan.items if str(item.index) in spec["results"]]
    for done, item in enumerate(todo, 1):
        result = spec["results"][str(item.index)]
        records[item.index] = runner.item_record(plan, item, result, efs)
        runner.log_item(plan, records[item.index], done, len(todo), result["log"], log)
    doc = runner.chunk_document(plan, records, True, "aws-batch", spec["job_ids"])
    runner.report(doc, log)
    ok = True
    if spec.get("publish"):
        # What succeeded is published even when too many items failed, so a rerun that
        # repeats only the failed items finds the rest already in place.
        ok = runner.publish_outputs(doc, efs, spec["publish"], log)
    manifest.write(efs / "input" / spec["result"], doc)
    return 0 if ok else 1


def cli(args) -> int:
    root = contract.mount_root()
    spec = Path(args.spec)
    if spec.is_relative_to(contract.DEFAULT_MOUNT_ROOT):
        # The container path, wherever the file systems are really mounted.
        spec = root / spec.relative_to(contract.DEFAULT_MOUNT_ROOT)
    return finish_chunk(spec, root)
