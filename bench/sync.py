"""Benchmark: `confluence sync` against `aws s3 sync`, both at their defaults, on emulated S3.

Cases (--quick sizes in brackets):
  small  push 2,000 files of 50 KiB            [200]
  large  push 20 files of 50 MiB               [2 files of 20 MiB]
  noop   resync 20,000 files of 1-4 KiB that are already there (first push untimed) [2,000]
Each case runs on plain loopback (moto answers in a few ms and is the bottleneck, which
hides per-request costs) and through confluence.emulator.proxy.Proxy adding a fixed latency
to every request (default 20 ms, --latency), as a real S3 region does. Each tool pushes into
its own fresh bucket; after each push every object is checked against the local files (size
and MD5 ETag, multipart ETags included). Targets, as ratio aws/ours: >= 2x for the small push
with latency, >= 3x for the no-op resync with latency, >= 1x on plain loopback.

The aws CLI (awscli v1) pins a docutils that conflicts with Snakemake's, so it is installed
on first use into a private venv (default: <system temp>/confluence-bench-awscli-venv).

Run: python bench/sync.py [--quick] [--cases small,large,noop] [--latency 0.02]
Exit status 1 if a tool failed or a verification failed; a missed target is only reported.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from confluence.emulator.proxy import Proxy

ROOT = Path(__file__).resolve().parents[1]
KIB, MIB = 1024, 1024 * 1024
AWSCLI = "awscli==1.46.2"
FIXED_MTIME = 1_704_067_200  # 2024-01-01: local files older than any upload, as in real use
TOOLS = ("ours", "aws")
TARGET_LOOPBACK = 1.0  # wanted ratio aws/ours on plain loopback, every case

# A moto server in its own process (its GIL apart from the clients'), on 127.0.0.1 and a free
# port that it prints; it exits when its parent goes away (stdin reaches end of file).
MOTO_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    files: int
    min_size: int
    max_size: int
    resync: bool  # time a no-op resync after an untimed first push
    target_latency: float | None  # wanted ratio aws/ours through the latency proxy


def cases(quick: bool) -> dict[str, Case]:
    small, large, noop = (200, 2, 2_000) if quick else (2_000, 20, 20_000)
    large_size = 20 * MIB if quick else 50 * MIB
    return {
        "small": Case("small", f"push {small:,} x 50 KiB", small, 50 * KIB, 50 * KIB, False, 2.0),
        "large": Case(
            "large",
            f"push {large:,} x {large_size // MIB} MiB",
            large,
            large_size,
            large_size,
            False,
            None,
        ),
        "noop": Case("noop", f"no-op resync {noop:,} x 1-4 KiB", noop, KIB, 4 * KIB, True, 3.0),
    }


def generate(case: Case, root: Path) -> dict[str, int]:
    """Write the case's files (same bytes on every run); return {relative path: size}."""
    rng = random.Random(f"confluence-bench-{case.name}-{case.files}")
    files = {}
    for index in range(case.files):
        relative = f"d{index // 100:03d}/f{index:06d}.bin"
        size = rng.randint(case.min_size, case.max_size)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        files[relative] = size
    return files


class Verifier:
    """Compares a bucket listing with the local files: keys, sizes and MD5 ETags."""

    def __init__(self, s3, root: Path, files: dict[str, int]):
        self.s3, self.root, self.files = s3, root, files
        self._etags: dict[tuple[str, int], str] = {}

    def expected_etag(self, relative: str, part_size: int = 0) -> str:
        key = (relative, part_size)
        if key not in self._etags:
            data = (self.root / relative).read_bytes()
            if part_size == 0:
                self._etags[key] = hashlib.md5(data).hexdigest()
            else:
                parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
                digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts))
                self._etags[key] = f"{digest.hexdigest()}-{len(parts)}"
        return self._etags[key]

    def check(self, bucket: str, prefix: str) -> int:
        listed = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/"
        ):
            for item in page.get("Contents", []):
                listed[item["Key"][len(prefix) + 1 :]] = (item["Size"], item["ETag"].strip('"'))
        problems = [
            f"missing s3://{bucket}/{prefix}/{k}" for k in sorted(set(self.files) - set(listed))
        ]
        problems += [
            f"unexpected s3://{bucket}/{prefix}/{k}" for k in sorted(set(listed) - set(self.files))
        ]
        for relative, size in sorted(self.files.items()):
            if relative not in listed:
                continue
            remote_size, etag = listed[relative]
            part_size = 0
            if "-" in etag:  # multipart: MD5 of the parts' MD5s, so the part size is needed
                head = self.s3.head_object(Bucket=bucket, Key=f"{prefix}/{relative}", PartNumber=1)
                part_size = head["ContentLength"]
            if remote_size != size:
                problems.append(f"{relative}: {remote_size} bytes in S3, {size} locally")
            elif etag != self.expected_etag(relative, part_size):
                problems.append(f"{relative}: ETag {etag} does not match the local file")
        if problems:
            shown = "\n  ".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise VerificationError(
                f"s3://{bucket}/{prefix}: {len(problems)} problems:\n  {shown}{more}"
            )
        return len(self.files)


class VerificationError(Exception):
    pass


class ToolFailed(Exception):
    pass


def ensure_awscli(venv: Path) -> Path:
    """The aws executable of a private venv, created and filled with pip on first use."""
    aws = venv / "bin" / "aws"
    if (
        aws.exists()
        and subprocess.run([str(aws), "--version"], capture_output=True).returncode == 0
    ):
        return aws
    if venv.exists() and not (venv / "pyvenv.cfg").exists():
        sys.exit(f"bench/sync.py: --awscli-venv {venv} exists and is not a venv; pick another")
    print(f"installing {AWSCLI} into {venv} (first use; it conflicts with Snakemake's docutils)")
    shutil.rmtree(venv, ignore_errors=True)  # a broken venv of ours: start again
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", AWSCLI], check=True
    )
    return aws


def confluence_command() -> list[str]:
    script = Path(sys.executable).with_name("confluence")
    return [str(script)] if script.exists() else [sys.executable, "-m", "confluence.cli"]


def require_sync_cli() -> None:
    result = subprocess.run(
        [*confluence_command(), "sync", "--help"], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(
            "bench/sync.py: `confluence sync` is not available "
            f"(exit {result.returncode}: {result.stderr.strip()[-300:]}); "
            "it lives in src/confluence/sync: install the package with pip install -e ."
        )


def tool_env(endpoint: str, workdir: Path) -> dict[str, str]:
    """Emulated AWS for both tools; our digest cache inside the run's temp dir (removed at
    the end, and no state carried over from an earlier run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        CONFLUENCE_SYNC_CACHE=str(workdir / "sync-cache.sqlite"),
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )
    return env


@dataclass(frozen=True)
class Timing:
    seconds: float  # wall time of the tool's process
    cpu: float  # its user + system CPU seconds
    server_cpu: float  # the moto server's meanwhile (it shares the 2 cores with the tool)

    def __str__(self) -> str:
        return f"{self.seconds:.2f} s (cpu: tool {self.cpu:.1f} s, moto {self.server_cpu:.1f} s)"


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Moto:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        port = self.proc.stdout.readline().strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError(f"the moto server did not start (printed {port!r})")
        self.url = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
        )

    def reset(self) -> None:
        """Drop every bucket (frees moto's memory between runs)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=60).read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Result:
    case: Case
    network: str
    seconds: dict[str, float]
    errors: list[str]

    @property
    def ratio(self) -> float | None:
        if self.errors or not ("ours" in self.seconds and "aws" in self.seconds):
            return None
        return self.seconds["aws"] / self.seconds["ours"]

    @property
    def target(self) -> float | None:
        return TARGET_LOOPBACK if self.network == "loopback" else self.case.target_latency


class Bench:
    """One benchmark run: the tools, the moto server, a temp dir, the proxy's latency."""

    def __init__(self, aws: Path, moto: Moto, workdir: Path, latency: float):
        self.aws, self.moto, self.workdir, self.latency = aws, moto, workdir, latency
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)

    def run_tool(self, tool: str, source: Path, bucket: str, endpoint: str, log: str) -> Timing:
        """One sync of ``source`` to s3://bucket/data at the tool's defaults, timed."""
        url = f"s3://{bucket}/data"
        if tool == "ours":
            command = [*confluence_command(), "sync", str(source), url]
        else:
            command = [str(self.aws), "s3", "sync", str(source), url]
        env = tool_env(endpoint, self.workdir)
        log_path = self.logs / log
        with log_path.open("w") as out:
            cpu, server_cpu = children_cpu(), process_cpu(self.moto.proc.pid)
            start = time.perf_counter()
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=3600
            )
            seconds = time.perf_counter() - start
            cpu = children_cpu() - cpu
            server_cpu = process_cpu(self.moto.proc.pid) - server_cpu
        if result.returncode != 0:
            tail = "\n    ".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise ToolFailed(f"{' '.join(command)} exited {result.returncode}:\n    {tail}")
        return Timing(seconds, cpu, server_cpu)

    def measure(self, case: Case) -> list[Result]:
        source = self.workdir / f"src-{case.name}"
        start = time.perf_counter()
        files = generate(case, source)
        print(
            f"\n== {case.title}: {len(files):,} files, {sum(files.values()) / MIB:,.1f} MiB "
            f"(generated in {time.perf_counter() - start:.1f} s)"
        )
        verifier = Verifier(self.moto.s3, source, files)
        networks = {"loopback": 0.0, f"+{self.latency * 1000:g} ms/request": self.latency}
        results = {name: Result(case, name, {}, []) for name in networks}
        try:
            for tool in TOOLS:
                if case.resync:
                    # One bucket per tool, pushed once untimed; each network times a resync.
                    bucket = f"bench-{case.name}-{tool}"
                    self.moto.s3.create_bucket(Bucket=bucket)
                    try:
                        first = self.run_tool(tool, source, bucket, self.moto.url, "first.log")
                        count = verifier.check(bucket, "data")
                    except (ToolFailed, VerificationError) as err:
                        for result in results.values():
                            result.errors.append(f"{tool} first push: {err}")
                        print(f"  {tool:4s} first push: FAILED: {err}")
                        continue
                    print(f"  {tool:4s} first push (untimed): {first}, verified {count} files")
                for index, (network, delay) in enumerate(networks.items()):
                    if not case.resync:
                        bucket = f"bench-{case.name}-{tool}-{index}"
                        self.moto.s3.create_bucket(Bucket=bucket)
                    log = f"{case.name}-{tool}-{index}.log"
                    proxy = Proxy(self.moto.url, latency=delay) if delay else None
                    try:
                        endpoint = proxy.url if proxy else self.moto.url
                        timing = self.run_tool(tool, source, bucket, endpoint, log)
                        count = verifier.check(bucket, "data")
                    except (ToolFailed, VerificationError) as err:
                        results[network].errors.append(f"{tool}: {err}")
                        print(f"  {tool:4s} {network}: FAILED: {err}")
                        continue
                    finally:
                        if proxy:
                            proxy.stop()
                    results[network].seconds[tool] = timing.seconds
                    requests = ""
                    if proxy:
                        counts = ", ".join(f"{m} {n:,}" for m, n in sorted(proxy.counts.items()))
                        requests = f" (requests: {counts})"
                    print(f"  {tool:4s} {network}: {timing}, verified {count} files{requests}")
                    if not case.resync:
                        self.moto.reset()  # moto keeps objects in memory: free them
        finally:
            self.moto.reset()
            shutil.rmtree(source, ignore_errors=True)
        return list(results.values())


def print_table(results: list[Result]) -> None:
    columns = (
        f"{'case':30s} {'network':17s} {'ours s':>8s} {'aws s3 sync s':>14s} "
        f"{'ratio':>7s} {'target':>7s}"
    )
    print(f"\n{columns}  result\n{'-' * (len(columns) + 8)}")
    for result in results:
        ratio, target = result.ratio, result.target
        if result.errors:
            verdict = "FAILED"
        elif target is None or ratio is None:
            verdict = "-"
        else:
            verdict = "PASS" if ratio >= target else "MISS"
        print(
            f"{result.case.title:30s} {result.network:17s} "
            f"{_cell(result.seconds.get('ours')):>8s} {_cell(result.seconds.get('aws')):>14s} "
            f"{_cell(ratio, 'x'):>7s} {'-' if target is None else f'>={target:g}x':>7s}  {verdict}"
        )


def _cell(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--cases", default="small,large,noop", help="comma list: small,large,noop")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request (proxy)")
    parser.add_argument(
        "--awscli-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "confluence-bench-awscli-venv",
        help="where the private awscli venv lives (created on first use)",
    )
    args = parser.parse_args()
    known = cases(args.quick)
    chosen = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"--cases: unknown {unknown}; choose from {', '.join(known)}")
    if args.latency <= 0:
        parser.error("--latency must be > 0 (the plain loopback run is always done)")

    # SIGTERM unwinds like Ctrl-C, so the moto server and the temp files go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    require_sync_cli()
    aws = ensure_awscli(args.awscli_venv)
    version = subprocess.run([str(aws), "--version"], capture_output=True, text=True)
    print(f"aws: {(version.stdout or version.stderr).strip()}")
    print(f"ours: {' '.join(confluence_command())} sync (package at {ROOT / 'src'})")
    print(f"cores: {os.cpu_count()}, latency through the proxy: {args.latency * 1000:g} ms")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="confluence-bench-sync-") as tmp:
        moto = Moto()
        print(f"moto: {moto.url} (pid {moto.proc.pid})")
        try:
            bench = Bench(aws, moto, Path(tmp), args.latency)
            for name in chosen:
                results += bench.measure(known[name])
        finally:
            moto.stop()
    print_table(results)
    for result in results:
        for error in result.errors:
            print(f"\n{result.case.title}, {result.network}: {error}")
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
