"""The ``confluence`` command: one subcommand per task, each a thin shell over the package."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from confluence import contract


def _module(args: argparse.Namespace) -> int:
    """Run one item of a reference module, exactly as a container would."""
    from confluence.modules import REGISTRY

    target = REGISTRY.get(args.name)
    if target is None:
        print(
            f"confluence module: unknown module {args.name!r}; known: {', '.join(REGISTRY)}",
            file=sys.stderr,
        )
        return 2
    try:
        index = contract.resolve_index(args.index)
    except ValueError as err:
        print(f"confluence module {args.name}: {err}", file=sys.stderr)
        return 2
    module_path, function = target.split(":")
    run = getattr(importlib.import_module(module_path), function)
    try:
        run(args.worklist, index, contract.mount_root(), args.extra)
    except contract.UpstreamMissing as err:
        print(f"{args.name}: skipped: {err}", file=sys.stderr)
        return contract.EXIT_UPSTREAM_MISSING
    except contract.ItemError as err:
        print(f"{args.name}: failed: {err}", file=sys.stderr)
        return 1
    return 0


def _delegate(target: str):
    """A subcommand implemented as ``cli(args) -> int`` in another module (imported lazily)."""

    def call(args: argparse.Namespace) -> int:
        module_path, function = target.split(":")
        return getattr(importlib.import_module(module_path), function)(args)

    return call


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confluence", description="SWOT Confluence on Snakemake: modules, planning, runs."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("module", help="run one item of a reference module (the container contract)")
    p.add_argument("name", help="module name, e.g. momma")
    p.add_argument(
        "-i",
        "--index",
        type=int,
        default=None,
        help="item index; omitted, -235 or -256: read AWS_BATCH_JOB_ARRAY_INDEX",
    )
    p.add_argument("worklist", help="work list, relative to the input mount (e.g. reaches.json)")
    p.add_argument("extra", nargs="*", help="the module's further arguments")
    p.set_defaults(func=_module)

    p = sub.add_parser("plan", help="print the plan: continents, basins, chunks, sets, items")
    p.add_argument(
        "--configfile", action="append", help="config file(s), default config/config.yaml"
    )
    p.add_argument("--write", metavar="DIR", help="also write the global and per-chunk work lists")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_delegate("confluence.plan:cli"))

    p = sub.add_parser(
        "import-legacy", help="turn a legacy confluence.yaml into this configuration"
    )
    p.add_argument("legacy", help="the legacy orchestrator's YAML file")
    p.add_argument("-o", "--output", required=True, help="where to write the new configuration")
    p.set_defaults(func=_delegate("confluence.legacy:cli"))

    p = sub.add_parser("synthesize", help="write the synthetic domain's files for one continent")
    p.add_argument(
        "--domain", help="the config's domain section as JSON (default: from --configfile)"
    )
    p.add_argument(
        "--configfile", action="append", help="config file(s), default config/config.yaml"
    )
    p.add_argument("--continent", required=True, help="continent code, e.g. na")
    p.add_argument("--input-dir", required=True, help="the input file system directory")
    p.add_argument("--truth-dir", required=True, help="where to write the true discharge")
    p.set_defaults(func=_delegate("confluence.synthetic:cli"))

    p = sub.add_parser("worklists", help="write the work lists of one chunk or continent")
    p.add_argument("unit", help="chunk ID or continent code")
    p.add_argument("--spec", required=True, help="the config's run and domain sections as JSON")
    p.add_argument("--output-dir", required=True, help="directory for the four work lists")
    p.set_defaults(func=_delegate("confluence.workflow:worklists_cli"))

    p = sub.add_parser("run-chunk", help="run every item of one module for one chunk (local)")
    p.add_argument("module", help="module name")
    p.add_argument("unit", help="chunk or continent ID")
    p.add_argument("--module-config", required=True, help="the module's configuration (JSON)")
    p.add_argument("--efs", required=True, help="directory holding one folder per file system")
    p.add_argument("--sentinel", required=True, help="the sentinel (manifest) to write")
    p.add_argument("--state", required=True, help="the partial manifest kept across reruns")
    p.add_argument("--upstream", nargs="*", default=[], help="upstream sentinels")
    p.add_argument("--run-type", default="constrained")
    p.add_argument("--workers", type=int, default=1, help="size of the process pool")
    p.add_argument(
        "--publish", help="publish the chunk's outputs here once done (s3://bucket/prefix or DIR)"
    )
    p.set_defaults(func=_delegate("confluence.runner:cli"))

    p = sub.add_parser(
        "preflight",
        help="check the AWS account (queues, job definitions, roles, EFS, buckets) against "
        "the configuration",
    )
    p.add_argument(
        "--configfile", action="append", help="config file(s) merged over config/config.yaml"
    )
    p.set_defaults(func=_delegate("confluence.batch.preflight:cli"))

    p = sub.add_parser(
        "finish-chunk",
        help="check, record and publish one chunk's outputs after its AWS Batch items job",
    )
    p.add_argument("spec", help="the controller's spec (JSON), a path under the mount root")
    p.set_defaults(func=_delegate("confluence.batch.finish:cli"))

    p = sub.add_parser("summary", help="per-module table and validation figures from sentinels")
    p.add_argument("sentinels", nargs="+", help="sentinel files")
    p.add_argument("--efs", required=True, help="directory holding one folder per file system")
    p.add_argument("--table", required=True, help="CSV table to write")
    p.add_argument("--figures", required=True, help="folder to gather the figures in")
    p.set_defaults(func=_delegate("confluence.summary:cli"))

    p = sub.add_parser(
        "sync", help="copy new and changed files between local folders and S3 (verified)"
    )
    p.add_argument("source", help="local directory or s3://bucket/prefix")
    p.add_argument("destination", help="local directory or s3://bucket/prefix")
    p.add_argument(
        "--delete", action="store_true", help="delete destination files the source lacks"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be copied and deleted, change nothing",
    )
    # Both append to one list so their order survives: later rules win, as in aws s3 sync.
    p.add_argument(
        "--include",
        dest="filters",
        action="append",
        default=[],
        type=lambda glob: ("include", glob),
        metavar="GLOB",
        help="include relative paths matching GLOB (repeatable; later rules win)",
    )
    p.add_argument(
        "--exclude",
        dest="filters",
        action="append",
        default=[],
        type=lambda glob: ("exclude", glob),
        metavar="GLOB",
        help="exclude relative paths matching GLOB (repeatable; later rules win)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="parallel transfers (default 32 x cores, at most 256)",
    )
    p.add_argument(
        "--files-from",
        metavar="FILE",
        help="sync only these paths (lines, JSON list or --manifest file); SRC is not listed",
    )
    p.add_argument("--manifest", metavar="FILE", help="write a JSON list of the files in place")
    p.set_defaults(func=_delegate("confluence.sync:cli"))

    p = sub.add_parser(
        "credentials",
        help="PO.DAAC temporary S3 credentials in SSM: renew now, enable or disable the schedule",
    )
    p.add_argument(
        "action",
        choices=["renew", "enable", "disable"],
        help="renew: fetch and store new credentials now; enable/disable: the 50-minute rule",
    )
    p.add_argument(
        "--configfile", action="append", help="config file(s), default config/config.yaml"
    )
    p.set_defaults(func=_delegate("confluence.podaac:cli"))

    p = sub.add_parser(
        "emulator",
        help="a local AWS endpoint (moto) whose Batch jobs run as local processes",
        description="Serve AWS on 127.0.0.1 with the configuration's queues, job definitions, "
        "file systems and buckets; Batch jobs run as local processes (module images as "
        "`confluence module NAME`, the project image as `confluence`). Prints "
        "AWS_ENDPOINT_URL=... and runs until interrupted.",
    )
    p.add_argument(
        "--configfile", action="append", help="config file(s), default config/config.yaml"
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--efs", help="directory of the file systems (default: config paths.efs)")
    p.add_argument("--workdir", help="per-job mount roots and scratch (default: a temp folder)")
    p.add_argument("--max-running", type=int, help="most jobs running at once (default: CPU count)")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="IMAGE=COMMAND",
        help="run jobs of IMAGE as COMMAND + the job's command (empty COMMAND: the job's "
        "command alone); repeatable",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="emulator only: multiply job timeouts (and the 30 s kill grace) by F",
    )
    p.add_argument("--request-log", metavar="FILE", help="append every request as a JSON line")
    p.add_argument(
        "--exit-with-stdin", action="store_true", help="also exit when stdin reaches EOF"
    )
    p.set_defaults(func=_delegate("confluence.emulator.server:cli"))

    p = sub.add_parser("infra", help="the AWS resources of the configuration, as code")
    infra = p.add_subparsers(dest="infra_command", required=True)
    p = infra.add_parser(
        "template",
        help="render the CloudFormation template (roles, EFS, queues, job definitions, buckets)",
    )
    p.add_argument(
        "--configfile", action="append", help="config file(s) merged over config/config.yaml"
    )
    p.add_argument("-o", "--output", help="write the template here (default: standard output)")
    p.add_argument(
        "--subnet-count",
        type=int,
        default=2,
        metavar="N",
        help="subnets (one per Availability Zone) the stack will get: one EFS mount target "
        "per file system in each (default 2)",
    )
    p.set_defaults(func=_delegate("confluence.infra.template:cli"))
    p = infra.add_parser(
        "podaac-package",
        help="zip the PO.DAAC credential renewal function (aws.podaac) for Lambda",
    )
    p.add_argument("-o", "--output", default="podaac.zip", help="default podaac.zip")
    p.set_defaults(func=_delegate("confluence.podaac:package_cli"))

    return parser


#: Thread pools of the numerical libraries. One item's result must not depend on the cores
#: its container or process pool happens to have (a BLAS with more threads sums in another
#: order), and items already run side by side, one per array child or worker.
SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("module", "run-chunk") and "numpy" not in sys.modules:
        os.environ.update(dict.fromkeys(SINGLE_THREADED, "1"))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
