"""The sync engine against a real S3 endpoint (moto's server on 127.0.0.1), no mocks.

Requests are counted, throttled and corrupted by ``confluence.emulator.proxy`` placed
between the engine and the server; interrupted runs are real subprocesses killed with
SIGKILL (or stopped with SIGTERM) midway.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from s3_server import S3Server

from confluence import cli
from confluence.emulator.proxy import FaultPlan, FaultRule, Proxy
from confluence.sync import SyncResult, direct, listing, sync
from confluence.sync import checksums as cs
from confluence.sync.atomic import PARTIAL_SUFFIX, _linker_for
from confluence.sync.cache import Identity, settled, written_settled
from confluence.sync.engine import make_client
from confluence.sync.listing import (
    Filters,
    ListingOrderError,
    LocalFile,
    list_s3,
    merge,
    parse_timestamp,
    sample_local,
    walk_local,
)
from confluence.sync.locations import parse_location
from confluence.sync.progress import ProgressBar

MiB = 1024 * 1024
BIG = 9 * MiB  # above the 8 MiB multipart threshold: two parts


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    path = tmp_path / "sync-cache.sqlite"
    monkeypatch.setenv("CONFLUENCE_SYNC_CACHE", str(path))
    return path


@pytest.fixture
def bucket(s3):
    name = f"sync-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def via_proxy(s3, monkeypatch):
    """Start a proxy in front of the server and point the engine (AWS_ENDPOINT_URL) at it."""
    started = []

    def start(**options) -> Proxy:
        proxy = Proxy(s3.url, **options)
        started.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # The digest cache records only files whose timestamps are older than the clock tick
    # in which they were hashed; real inputs are older than that by far.
    time.sleep(0.03)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file below root, hidden ones included (so a leftover temporary shows up)."""
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def s3_tree(client, bucket: str, prefix: str = "") -> dict[str, bytes]:
    out = {}
    start = f"{prefix}/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(start) :]] = body
    return out


def s3_etags(client, bucket: str, prefix: str = "") -> dict[str, str]:
    start = f"{prefix}/" if prefix else ""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(start) :]] = obj["ETag"].strip('"')
    return out


def expected_etag(data: bytes) -> str:
    kind = cs.upload_kind(len(data))
    digests = cs.StreamDigests([kind])
    digests.update(data)
    return digests.result()[kind]


def sample_files(count: int = 12, big: bool = False) -> dict[str, bytes]:
    files = {f"dir/sub/file{i:03d}.nc": os.urandom(100 + 37 * i) for i in range(count)}
    files["a-b.txt"] = b"sorts before a/ in UTF-8 order"
    files["a/b.txt"] = b"inside a"
    files["\u00e9t\u00e9/caf\u00e9.txt"] = "caf\u00e9 au lait".encode()
    files["empty.txt"] = b""
    if big:
        files["big/blob.bin"] = os.urandom(BIG)
    return files


def run_cli(*args: str) -> int:
    return cli.main(["sync", *args])


# -- all four directions, incremental ---------------------------------------------------------


def test_all_directions_copy_verify_and_resync_as_noop(s3, bucket, tmp_path):
    files = sample_files(big=True)
    src = tmp_path / "src"
    write_tree(src, files)
    client = s3.client()
    n = len(files)

    pushed = sync(str(src), f"s3://{bucket}/run")
    assert pushed.ok, pushed.failed
    assert (pushed.copied, pushed.skipped, pushed.bytes) == (n, 0, sum(map(len, files.values())))
    assert s3_tree(client, bucket, "run") == files
    assert s3_etags(client, bucket, "run")["big/blob.bin"].endswith("-2")

    pulled = sync(f"s3://{bucket}/run", str(tmp_path / "back"))
    assert pulled.ok and pulled.copied == n
    assert read_tree(tmp_path / "back") == files

    copied = sync(f"s3://{bucket}/run", f"s3://{bucket}/copy")
    assert copied.ok and copied.copied == n
    # Single-part objects are copied whole and multipart ones with the same part size, so
    # the ETags carry over and the next sync compares the listings alone.
    assert s3_etags(client, bucket, "copy") == s3_etags(client, bucket, "run")

    local = sync(str(src), str(tmp_path / "mirror"))
    assert local.ok and local.copied == n
    assert read_tree(tmp_path / "mirror") == files

    for again in (
        sync(str(src), f"s3://{bucket}/run"),
        sync(f"s3://{bucket}/run", str(tmp_path / "back")),
        sync(f"s3://{bucket}/run", f"s3://{bucket}/copy"),
        sync(str(src), str(tmp_path / "mirror")),
    ):
        assert again.ok, again.failed
        assert (again.copied, again.skipped, again.deleted, again.bytes) == (0, n, 0, 0)
        assert again.hashed_files == 0  # digests came from the cache and the listings


def test_summary_entries_and_manifest(s3, bucket, tmp_path):
    files = sample_files(3, big=True)
    write_tree(tmp_path / "src", files)
    manifest = tmp_path / "out" / "manifest.json"
    first = sync(str(tmp_path / "src"), f"s3://{bucket}/m", manifest=manifest)
    assert first.summary().startswith(f"synced {tmp_path / 'src'} -> s3://{bucket}/m: ")
    assert f"{len(files)} copied, 0 skipped, 0 deleted, {first.bytes} bytes in" in first.summary()

    del files["a/b.txt"]
    (tmp_path / "src" / "a" / "b.txt").unlink()
    (tmp_path / "src" / "new.txt").write_bytes(b"new")
    files["new.txt"] = b"new"
    second = sync(str(tmp_path / "src"), f"s3://{bucket}/m", manifest=manifest)
    doc = json.loads(manifest.read_text())
    assert doc["ok"] and doc["part_size"] == cs.PART_SIZE
    by_path = {entry["path"]: entry for entry in doc["files"]}
    assert set(by_path) == set(files)  # copied and already in place, not the one left behind
    for rel, data in files.items():
        entry = by_path[rel]
        assert entry["size"] == len(data)
        assert entry["destination"] == f"s3://{bucket}/m/{rel}"
        assert entry["checksum"] == expected_etag(data)
    assert by_path["new.txt"]["checksum_type"] == "md5"
    assert by_path["big/blob.bin"]["checksum_type"] == "s3-multipart-etag"
    assert by_path["big/blob.bin"]["part_size"] == cs.PART_SIZE
    actions = {entry["path"]: entry["action"] for entry in second.entries}
    assert actions["new.txt"] == "copied" and actions["big/blob.bin"] == "skipped"
    assert isinstance(second, SyncResult) and second.ok


# -- filters, delete, dry run -----------------------------------------------------------------


def test_include_exclude_later_rules_win(s3, bucket, tmp_path, capsys):
    files = {
        "keep/a.nc": b"1",
        "keep/b.txt": b"2",
        "keep/skip/c.nc": b"3",
        "other/d.nc": b"4",
    }
    write_tree(tmp_path / "src", files)
    code = run_cli(
        str(tmp_path / "src"),
        f"s3://{bucket}/f",
        "--exclude",
        "*",
        "--include",
        "keep/*.nc",
        "--exclude",
        "keep/skip/*",
    )
    assert code == 0
    assert set(s3_tree(s3.client(), bucket, "f")) == {"keep/a.nc"}
    out = capsys.readouterr()  # not a terminal: no progress bar, only the summary line
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("synced ")

    result = sync(str(tmp_path / "src"), str(tmp_path / "dst"), exclude=["*"], include=["*.txt"])
    assert set(read_tree(tmp_path / "dst")) == {"keep/b.txt"}
    assert result.copied == 1


def test_dry_run_lists_exact_actions_and_changes_nothing(s3, bucket, tmp_path, capsys):
    client = s3.client()
    old = {"same.txt": b"same", "changed.txt": b"old content", "extra.txt": b"only there"}
    write_tree(tmp_path / "old", old)
    assert sync(str(tmp_path / "old"), f"s3://{bucket}/d").ok
    new = {"same.txt": b"same", "changed.txt": b"new content", "added/x.bin": b"xyz"}
    write_tree(tmp_path / "src", new)
    before = s3_tree(client, bucket, "d")

    capsys.readouterr()
    code = run_cli(str(tmp_path / "src"), f"s3://{bucket}/d", "--delete", "--dry-run")
    out = capsys.readouterr()
    assert code == 0
    assert out.out.splitlines() == [
        f"copy {tmp_path / 'src' / 'added' / 'x.bin'} -> s3://{bucket}/d/added/x.bin (3 bytes)",
        f"copy {tmp_path / 'src' / 'changed.txt'} -> s3://{bucket}/d/changed.txt (11 bytes)",
        f"delete s3://{bucket}/d/extra.txt",
    ]
    assert "2 to copy, 1 skipped, 1 to delete" in out.err
    assert s3_tree(client, bucket, "d") == before

    # Without --delete nothing is deleted; with it, the destination mirrors the source.
    kept = sync(str(tmp_path / "src"), f"s3://{bucket}/d")
    assert (kept.copied, kept.deleted) == (2, 0)
    assert s3_tree(client, bucket, "d") == {**new, "extra.txt": b"only there"}
    mirrored = sync(str(tmp_path / "src"), f"s3://{bucket}/d", delete=True)
    assert (mirrored.copied, mirrored.skipped, mirrored.deleted) == (0, 3, 1)
    assert s3_tree(client, bucket, "d") == new

    # Local destination, --delete: same rules; excluded files are neither copied nor deleted.
    write_tree(tmp_path / "local", {"extra.txt": b"x", "keep.log": b"log"})
    result = sync(str(tmp_path / "src"), str(tmp_path / "local"), delete=True, exclude=["*.log"])
    assert result.ok and result.deleted == 1
    assert read_tree(tmp_path / "local") == {**new, "keep.log": b"log"}


# -- paging, no-op request counts, multipart --------------------------------------------------


def test_paging_and_noop_resync_sends_no_object_requests(s3, bucket, tmp_path, via_proxy):
    files = {f"p/{i // 100:02d}/{i:04d}.txt": f"file {i}".encode() for i in range(1100)}
    s3.seed(bucket, {f"many/{rel}": data for rel, data in files.items()})
    write_tree(tmp_path / "src", files)
    proxy = via_proxy()

    # The same files on both sides: each local file is hashed once, nothing is sent.
    first = sync(str(tmp_path / "src"), f"s3://{bucket}/many")
    assert (first.copied, first.skipped, first.hashed_files) == (0, 1100, 1100)
    assert proxy.counts == {"GET": 2}  # two listing pages (1000 + 100 keys), nothing else
    proxy.reset_counts()
    again = sync(str(tmp_path / "src"), f"s3://{bucket}/many")
    assert (again.copied, again.skipped, again.hashed_files) == (0, 1100, 0)
    assert proxy.counts == {"GET": 2}

    # Pull into a copy missing files on both sides of the page boundary, plus an extra one.
    back = tmp_path / "back"
    shutil.copytree(tmp_path / "src", back)
    missing = ["p/00/0000.txt", "p/09/0999.txt", "p/10/1000.txt", "p/10/1099.txt"]
    for rel in missing:
        (back / rel).unlink()
    write_tree(back, {"p/05/extra.txt": b"not in the bucket"})
    proxy.reset_counts()
    pulled = sync(f"s3://{bucket}/many", str(back), delete=True)
    assert (pulled.copied, pulled.skipped, pulled.deleted) == (4, 1096, 1)
    assert proxy.counts == {"GET": 2 + 4}  # the listing pages and the four downloads
    assert read_tree(back) == files
    proxy.reset_counts()
    again = sync(f"s3://{bucket}/many", str(back))
    assert (again.copied, again.skipped, again.hashed_files) == (0, 1100, 0)
    assert proxy.counts == {"GET": 2}


def test_multipart_file_etag_and_resync(s3, bucket, tmp_path, via_proxy):
    data = os.urandom(BIG + 12345)
    write_tree(tmp_path / "src", {"big.bin": data})
    proxy = via_proxy()
    first = sync(str(tmp_path / "src"), f"s3://{bucket}/mp")
    assert first.ok
    etag = s3_etags(s3.client(), bucket, "mp")["big.bin"]
    assert etag.endswith("-2") and etag == expected_etag(data)
    assert first.entries[0]["checksum"] == etag
    assert proxy.counts.get("POST") == 2  # create and complete the multipart upload
    assert proxy.counts.get("PUT") == 2  # its two parts

    proxy.reset_counts()
    again = sync(str(tmp_path / "src"), f"s3://{bucket}/mp")
    assert (again.copied, again.skipped) == (0, 1)
    assert proxy.counts == {"GET": 1}

    pulled = sync(f"s3://{bucket}/mp", str(tmp_path / "back"))
    assert pulled.ok and (tmp_path / "back" / "big.bin").read_bytes() == data


def test_foreign_part_size_is_recognized_not_recopied(s3, bucket, tmp_path, via_proxy):
    """An object uploaded by another tool with 5 MiB parts: the listing's ETag has 3 parts
    where this engine would use 2; a HEAD of part 1 tells the part size and the local file
    is hashed with it, so nothing is copied."""
    data = os.urandom(12 * MiB)
    part = 5 * MiB
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="f/foreign.bin")
    parts = []
    for number, start in enumerate(range(0, len(data), part), 1):
        answer = client.upload_part(
            Bucket=bucket,
            Key="f/foreign.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + part],
        )
        parts.append({"ETag": answer["ETag"], "PartNumber": number})
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="f/foreign.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
    )
    assert s3_etags(client, bucket, "f")["foreign.bin"].endswith("-3")
    write_tree(tmp_path / "src", {"foreign.bin": data})

    proxy = via_proxy()
    result = sync(str(tmp_path / "src"), f"s3://{bucket}/f")
    assert (result.copied, result.skipped) == (0, 1), result.failed
    assert "PUT" not in proxy.counts and "POST" not in proxy.counts
    entry = result.entries[0]
    assert (entry["checksum_type"], entry["part_size"]) == ("s3-multipart-etag", part)

    pulled = sync(f"s3://{bucket}/f", str(tmp_path / "back"))
    assert pulled.ok and (tmp_path / "back" / "foreign.bin").read_bytes() == data


def test_etag_that_is_no_md5_falls_back_to_the_stored_checksum(s3, bucket, tmp_path, via_proxy):
    """SSE-KMS: the listing's ETag matches no local digest, so a HEAD reveals the encryption
    and the stored SHA-256 decides; without a matching checksum the file is copied."""
    data = os.urandom(4000)
    etag = s3.seed_encrypted(bucket, "kms/same.bin", data)
    s3.seed_encrypted(bucket, "kms/other.bin", os.urandom(4000))
    assert etag != hashlib.md5(data).hexdigest()
    write_tree(tmp_path / "src", {"same.bin": data, "other.bin": os.urandom(4000)})

    proxy = via_proxy()
    result = sync(str(tmp_path / "src"), f"s3://{bucket}/kms", dry_run=True)
    assert proxy.counts == {"GET": 1, "HEAD": 2}  # the listing, a HEAD per ETag not matched
    actions = {e["path"]: (e["action"], e["checksum_type"]) for e in result.entries}
    assert actions == {"same.bin": ("skipped", "sha256"), "other.bin": ("copy", None)}

    pulled = sync(f"s3://{bucket}/kms", str(tmp_path / "back"), files=["same.bin"])
    assert pulled.ok, pulled.failed
    assert (tmp_path / "back" / "same.bin").read_bytes() == data
    assert pulled.entries[0]["checksum_type"] == "sha256"

    # No MD5 ETag and no stored checksum: nothing to verify a download against, so it is
    # refused (and an upload of identical bytes is not skipped).
    s3.seed_encrypted(bucket, "kms/bare.bin", data, checksum=False)
    refused = sync(f"s3://{bucket}/kms", str(tmp_path / "back"), files=["bare.bin"])
    assert [path for path, _ in refused.failed] == [f"s3://{bucket}/kms/bare.bin"]
    assert refused.failed[0][1].startswith("cannot verify the download")
    assert not (tmp_path / "back" / "bare.bin").exists() and not refused.retried
    write_tree(tmp_path / "bare", {"bare.bin": data})
    planned = sync(str(tmp_path / "bare"), f"s3://{bucket}/kms", files=["bare.bin"], dry_run=True)
    assert [e["action"] for e in planned.entries] == ["copy"]


# -- checksum mismatches ----------------------------------------------------------------------


def test_same_size_edit_with_restored_mtime_is_detected(s3, bucket, tmp_path):
    path = tmp_path / "src" / "data.nc"
    write_tree(tmp_path / "src", {"data.nc": b"version one"})
    assert sync(str(tmp_path / "src"), f"s3://{bucket}/e").copied == 1
    st = path.stat()
    path.write_bytes(b"version two")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back, as rsync -t would
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    time.sleep(0.03)

    result = sync(str(tmp_path / "src"), f"s3://{bucket}/e")
    assert (result.copied, result.skipped) == (1, 0)
    assert s3_tree(s3.client(), bucket, "e") == {"data.nc": b"version two"}


def test_corrupted_download_is_rejected_and_retried(s3, bucket, tmp_path, via_proxy):
    files = {"small.bin": os.urandom(5000), "big.bin": os.urandom(BIG)}
    write_tree(tmp_path / "src", files)
    assert sync(str(tmp_path / "src"), f"s3://{bucket}/c").ok
    etag = expected_etag(files["big.bin"])

    # Every body of small.bin corrupted: all attempts fail, nothing is written.
    proxy = via_proxy(
        faults=FaultPlan(corrupt=[FaultRule(every=1, method="GET", path=r"/c/small\.bin")])
    )
    broken = sync(f"s3://{bucket}/c", str(tmp_path / "dst"))
    assert not broken.ok
    assert [path for path, _ in broken.failed] == [f"s3://{bucket}/c/small.bin"]
    # A single GET answer carries the stored SHA-256, which botocore checks as it reads.
    assert "corrupted in transit; not written" in broken.failed[0][1]
    assert proxy.injected["corrupted"] == 4  # retried before giving up
    assert len(broken.retried) == 3
    assert read_tree(tmp_path / "dst") == {"big.bin": files["big.bin"]}

    # One corrupted part of the multipart download: detected, retried, then right.
    proxy = via_proxy(
        faults=FaultPlan(corrupt=[FaultRule(first=1, method="GET", path=r"/c/big\.bin")])
    )
    healed = sync(f"s3://{bucket}/c", str(tmp_path / "dst2"))
    assert healed.ok, healed.failed
    assert proxy.injected["corrupted"] == 1
    # Ranged GETs carry no checksum: the engine's MD5-per-part ETag check caught it.
    assert [path for path, _ in healed.retried] == [f"s3://{bucket}/c/big.bin"]
    assert healed.retried[0][1].startswith(f"downloaded bytes do not match the listed ETag {etag}")
    assert read_tree(tmp_path / "dst2") == files


def test_object_overwritten_after_listing_is_not_written(s3, bucket, tmp_path):
    client = s3.client()
    files = {"small.bin": b"A" * 3000, "big.bin": b"B" * BIG}
    write_tree(tmp_path / "src", files)
    assert sync(str(tmp_path / "src"), f"s3://{bucket}/o").ok

    def overwrite_when_copy_starts(event, path, size):
        if event == "copy":  # listed already, download not started yet
            client.put_object(Bucket=bucket, Key=f"o/{path}", Body=b"C" * size)

    result = sync(f"s3://{bucket}/o", str(tmp_path / "dst"), progress=overwrite_when_copy_starts)
    assert sorted(path for path, _ in result.failed) == [
        f"s3://{bucket}/o/big.bin",
        f"s3://{bucket}/o/small.bin",
    ]
    assert all("changed after it was listed" in reason for _, reason in result.failed)
    assert read_tree(tmp_path / "dst") == {}

    rerun = sync(f"s3://{bucket}/o", str(tmp_path / "dst"))
    assert rerun.ok and read_tree(tmp_path / "dst") == {k: b"C" * len(v) for k, v in files.items()}


# -- throttling, interruption -----------------------------------------------------------------


def test_throttling_is_retried_and_survived(s3, bucket, tmp_path, via_proxy):
    files = {f"t/{i:02d}.bin": os.urandom(300 + i) for i in range(15)}
    write_tree(tmp_path / "src", files)
    plan = FaultPlan(
        throttle=[
            FaultRule(first=4, method="PUT", status=503),  # S3's SlowDown
            FaultRule(first=2, method="PUT", status=400, code="TooManyRequestsException"),
            FaultRule(first=1, method="PUT", status=500, code="InternalError"),
            FaultRule(first=1, method="GET", status=429),  # the destination's listing
        ]
    )
    proxy = via_proxy(faults=plan)
    result = sync(str(tmp_path / "src"), f"s3://{bucket}/t")
    assert result.ok, result.failed
    assert proxy.injected == {
        "503 SlowDown": 4,
        "400 TooManyRequestsException": 2,
        "500 InternalError": 1,
        "429 TooManyRequests": 1,
    }
    assert proxy.counts["PUT"] == len(files) + 7  # each answered fault was sent again
    assert s3_tree(s3.client(), bucket, "t") == files

    # Object GETs only (the listing is GET /bucket?list-type=2&prefix=t%2F): throttling the
    # lone listing request six times would only measure botocore's growing backoff.
    downloads = FaultRule(first=6, method="GET", path=r"/t/", status=503)
    proxy = via_proxy(faults=FaultPlan(throttle=[downloads]))
    pulled = sync(f"s3://{bucket}/t", str(tmp_path / "back"))
    assert pulled.ok, pulled.failed
    assert proxy.injected == {"503 SlowDown": 6}
    assert read_tree(tmp_path / "back") == files


def _start_cli(args: list[str], endpoint: str, concurrency: int = 4) -> subprocess.Popen:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    command = [sys.executable, "-m", "confluence.cli", "sync", *args]
    command += ["--concurrency", str(concurrency)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_until(condition, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sync never got midway"
        time.sleep(0.01)


def test_killed_upload_leaves_only_complete_objects_and_rerun_finishes(
    s3, bucket, tmp_path, via_proxy
):
    files = {f"k/{i:03d}.bin": os.urandom(2000 + i) for i in range(80)}
    files["k/000-big.bin"] = os.urandom(BIG)
    write_tree(tmp_path / "src", files)
    client = s3.client()
    proxy = via_proxy(latency=0.04)
    process = _start_cli([str(tmp_path / "src"), f"s3://{bucket}/up"], proxy.url)
    _wait_until(lambda: len(s3_etags(client, bucket, "up")) >= 8, process)
    process.kill()  # SIGKILL: no cleanup at all
    process.wait()

    visible = s3_etags(client, bucket, "up")
    assert 8 <= len(visible) < len(files)
    for rel, etag in visible.items():  # every visible object is complete and right
        assert etag == expected_etag(files[rel]), rel

    # (A request the proxy had already passed on may still complete after the kill.)
    rerun = sync(str(tmp_path / "src"), f"s3://{bucket}/up")
    assert rerun.ok and rerun.copied + rerun.skipped == len(files)
    assert rerun.skipped >= len(visible) and rerun.copied > 0
    assert s3_tree(client, bucket, "up") == files


def test_killed_download_leaves_only_complete_files_and_rerun_finishes(
    s3, bucket, tmp_path, via_proxy
):
    files = {f"{i:03d}.bin": os.urandom(2000 + i) for i in range(80)}
    files["000-big.bin"] = os.urandom(BIG)
    write_tree(tmp_path / "src", files)
    assert sync(str(tmp_path / "src"), f"s3://{bucket}/down").ok
    dst = tmp_path / "dst"
    dst.mkdir()
    unnamed = _linker_for(str(dst)) is not None
    proxy = via_proxy(latency=0.04)
    process = _start_cli([f"s3://{bucket}/down", str(dst)], proxy.url)
    _wait_until(lambda: len(os.listdir(dst)) >= 8, process)
    process.kill()
    process.wait()

    present = read_tree(dst)
    partial = {rel for rel in present if rel.endswith(PARTIAL_SUFFIX)}
    if unnamed:  # O_TMPFILE: a killed download leaves no name at all
        assert not partial
    complete = {rel: data for rel, data in present.items() if rel not in partial}
    assert 8 <= len(complete) < len(files)
    for rel, data in complete.items():
        assert data == files[rel], rel

    rerun = sync(f"s3://{bucket}/down", str(dst))
    assert rerun.ok and rerun.copied == len(files) - len(complete)
    assert {k: v for k, v in read_tree(dst).items() if k not in partial} == files


def test_sigterm_aborts_multipart_upload(s3, bucket, tmp_path, via_proxy):
    write_tree(tmp_path / "src", {"big.bin": os.urandom(BIG)})
    client = s3.client()
    proxy = via_proxy(latency=0.3)
    # One request at a time: after the upload is created, its two parts and the completion
    # take 0.9 s, the window in which SIGTERM must stop it.
    process = _start_cli([str(tmp_path / "src"), f"s3://{bucket}/term"], proxy.url, 1)
    _wait_until(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert b"interrupted" in err
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert s3_etags(client, bucket, "term") == {}


# -- file lists, errors -----------------------------------------------------------------------


def test_files_from_syncs_exactly_the_list(s3, bucket, tmp_path, via_proxy, capsys):
    files = {"out/a.nc": b"a", "out/b.nc": b"bb", "out/c.nc": b"ccc", "other/d.nc": b"d"}
    write_tree(tmp_path / "src", files)
    listing = tmp_path / "files.txt"
    listing.write_text("# published outputs\nout/a.nc\n\nout/c.nc\n")
    manifest = tmp_path / "manifest.json"
    code = run_cli(
        str(tmp_path / "src"),
        f"s3://{bucket}/pub",
        "--files-from",
        str(listing),
        "--manifest",
        str(manifest),
    )
    assert code == 0
    assert s3_tree(s3.client(), bucket, "pub") == {"out/a.nc": b"a", "out/c.nc": b"ccc"}
    assert [e["path"] for e in json.loads(manifest.read_text())["files"]] == [
        "out/a.nc",
        "out/c.nc",
    ]
    # A manifest is a file list too: publish exactly what an earlier sync put in place.
    assert (
        run_cli(str(tmp_path / "src"), str(tmp_path / "copy"), "--files-from", str(manifest)) == 0
    )
    assert read_tree(tmp_path / "copy") == {"out/a.nc": b"a", "out/c.nc": b"ccc"}

    # From S3, a file list means HEADs of those keys only: no listing of the source.
    proxy = via_proxy()
    result = sync(f"s3://{bucket}/pub", str(tmp_path / "dst"), files=["out/c.nc", "out/zz.nc"])
    assert proxy.counts == {"HEAD": 2, "GET": 1}  # two HEADs, one download
    assert result.copied == 1
    assert result.failed == [
        (f"s3://{bucket}/pub/out/zz.nc", "listed in the file list but missing in the source")
    ]
    assert read_tree(tmp_path / "dst") == {"out/c.nc": b"ccc"}

    capsys.readouterr()
    assert run_cli(str(tmp_path / "src"), str(tmp_path / "x"), "--files-from", "/nonexistent") == 2
    with pytest.raises(ValueError, match="cannot be combined"):
        sync(str(tmp_path / "src"), str(tmp_path / "x"), files=["out/a.nc"], delete=True)
    with pytest.raises(ValueError, match="'..'"):
        sync(str(tmp_path / "src"), str(tmp_path / "x"), files=["../etc/passwd"])


def test_failures_are_named_and_set_the_exit_code(s3, tmp_path, capsys):
    write_tree(tmp_path / "src", {"a.txt": b"a"})
    code = run_cli(str(tmp_path / "src"), "s3://no-such-bucket-here/x")
    err = capsys.readouterr().err
    assert code == 1
    assert "s3://no-such-bucket-here/x" in err and "NoSuchBucket" in err
    assert "1 failed" in err.splitlines()[-1]

    assert run_cli(str(tmp_path / "missing"), str(tmp_path / "dst")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(str(tmp_path / "src"), str(tmp_path / "src" / "inside")) == 2

    # A local source listing with an unreadable directory: that failure is listed and
    # nothing is deleted, since absence from an incomplete listing proves nothing.
    if os.geteuid() != 0:  # root reads any directory
        write_tree(tmp_path / "src", {"locked/b.txt": b"b"})
        write_tree(tmp_path / "dst", {"locked/b.txt": b"b", "a.txt": b"a"})
        (tmp_path / "src" / "locked").chmod(0)
        try:
            result = sync(str(tmp_path / "src"), str(tmp_path / "dst"), delete=True)
        finally:
            (tmp_path / "src" / "locked").chmod(0o755)
        assert not result.ok and result.deleted == 0
        assert (tmp_path / "dst" / "locked" / "b.txt").exists()


def test_progress_bar_draws_on_a_terminal_only(tmp_path):
    write_tree(tmp_path / "src", {f"{i}.bin": os.urandom(2000) for i in range(5)})
    assert ProgressBar.if_interactive(io.StringIO()) is None
    leader, follower = os.openpty()
    with open(follower, "w") as terminal:
        bar = ProgressBar.if_interactive(terminal)
        assert bar is not None
        result = sync(str(tmp_path / "src"), str(tmp_path / "dst"), progress=bar)
        bar.close()
    drawn = os.read(leader, 1 << 16).decode()
    os.close(leader)
    assert result.ok and "\r" in drawn
    assert re.search(r"\d+/\d+ files, [\d.]+ [KM]?B/[\d.]+ [KM]?B", drawn), drawn


# -- pure pieces ------------------------------------------------------------------------------


def test_local_walk_order_matches_s3_listing_order(s3, bucket, tmp_path):
    names = ["a/b", "a-b", "a0", "a!b", "\u00e9", "z", "a/b/c", "a/bc", "a.b/x", "A"]
    names = [n for n in names if n != "a/b"]  # a/b cannot be both a file and a directory
    files = {name: b"x" for name in names}
    write_tree(tmp_path / "tree", files)
    client = s3.client()
    for name in names:
        client.put_object(Bucket=bucket, Key=f"o/{name}", Body=b"x")
    walked = [f.rel for f in walk_local(str(tmp_path / "tree"), lambda *a: None)]
    assert walked == list(s3_etags(client, bucket, "o"))
    assert walked == sorted(walked, key=lambda rel: rel.encode())


def test_merge_refuses_unsorted_listings():
    def entries(*rels):
        return iter(LocalFile(rel, rel, Identity(1, 0, 0, 0)) for rel in rels)

    pairs = list(merge(entries("a", "c"), entries("b", "c")))
    assert [(rel, s is not None, d is not None) for rel, s, d in pairs] == [
        ("a", True, False),
        ("b", False, True),
        ("c", True, True),
    ]
    with pytest.raises(ListingOrderError, match="not in UTF-8 binary order"):
        list(merge(entries("b", "a"), entries()))


def test_filters_last_match_wins():
    rules = Filters([("exclude", "*"), ("include", "*.nc"), ("exclude", "tmp/*")])
    assert rules("x/a.nc") and not rules("x/a.txt") and not rules("tmp/a.nc")
    assert Filters()("anything")
    with pytest.raises(ValueError):
        Filters([("keep", "*")])


def test_stream_digests_match_hashlib_in_any_chunking():
    data = os.urandom(3 * 1000 + 7)
    kinds = ["md5", "sha256", "crc32", "etag:1000", "sha256:1000", "crc32:1000"]
    whole = cs.StreamDigests(kinds)
    whole.update(data)
    pieces = cs.StreamDigests(kinds)
    for start in range(0, len(data), 333):
        pieces.update(data[start : start + 333])
    assert whole.result() == pieces.result()
    result = whole.result()
    assert result["md5"] == hashlib.md5(data).hexdigest()
    parts = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    assert result["etag:1000"] == f"{hashlib.md5(joined).hexdigest()}-4"
    # S3's composite CRC-32 (botocore's default checksum of multipart uploads).
    crcs = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
    composite = base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()
    assert result["crc32:1000"] == f"{composite}-4"


def test_stored_checksum_reads_full_and_composite_forms():
    full = {"ChecksumSHA256": "abc=", "ChecksumType": "FULL_OBJECT"}
    assert cs.stored_checksum(full, "0" * 32) == ("sha256", "abc=", None)
    assert cs.stored_checksum({"ChecksumSHA256": "abc=-3"}, "x") == ("sha256", "abc=", 3)
    # Some servers omit the "-N" of a composite checksum; the ETag tells the part count.
    assert cs.stored_checksum({"ChecksumSHA256": "abc="}, f"{'0' * 32}-2") == ("sha256", "abc=", 2)
    assert cs.stored_checksum({"ChecksumCRC32": "AAAAAA=="}, "0" * 32) == (
        "crc32",
        "AAAAAA==",
        None,
    )
    assert cs.stored_checksum({}, "0" * 32) is None
    composite = {"ChecksumCRC32": "AAAAAA==", "ChecksumType": "COMPOSITE"}
    assert cs.stored_checksum(composite, f"{'0' * 32}-3") == ("crc32", "AAAAAA==", 3)
    assert cs.answered_checksum({"ChecksumCRC32": "x=-2", "ETag": '"e"'}) == ("crc32", "x=-2")
    assert cs.answered_checksum({"ETag": '"e"'}) is None


def test_cache_skips_files_modified_within_a_clock_tick():
    now = time.time_ns()
    assert settled(Identity(1, now - 10**9 + 1, now - 10**9 + 1, 1), now)
    assert not settled(Identity(1, now - 1_000_000, now - 10**9 + 1, 1), now)  # fresh mtime
    assert not settled(Identity(1, now - 10**9 + 1, now - 1_000_000, 1), now)  # fresh ctime
    whole_seconds = (now // 10**9 - 1) * 10**9
    assert not settled(Identity(1, whole_seconds, whole_seconds, 1), now)  # coarse timestamps
    # Files the engine wrote with an explicit mtime: the ctime tells the granularity.
    assert written_settled(Identity(1, now - 10**9, now - 5, 1), now)
    assert not written_settled(Identity(1, now - 5_000_000, now - 5, 1), now)
    second = now // 10**9 * 10**9
    assert not written_settled(Identity(1, second - 10**9, second, 1), now)


# -- speed: direct small uploads, fast listings --------------------------------------------


def test_direct_put_signature_matches_botocore(monkeypatch):
    """The SigV4 signature of a direct PutObject is the one botocore computes for the same
    request (a key with characters that need escaping, a session token)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials

    moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *_: moment)
    creds = Credentials("AKIDEXAMPLE", "secret/key+x", "token==")
    key = "run 7/\u00e9t\u00e9/a+b=c&d~e(1).nc"
    template = direct.Template("https", "s3.eu-west-3.amazonaws.com", 443, "", "/bkt/", "", "", "")
    url = f"https://bkt.s3.eu-west-3.amazonaws.com{template.path(key)[4:]}"
    path = "/" + template.path(key)[len("/bkt/") :]
    request = AWSRequest("PUT", url, headers={"x-amz-checksum-crc32": "AAAAAA=="}, data=b"x")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(creds, "s3", "eu-west-3").add_auth(request)

    headers = {
        "host": direct.host_header(url),
        "x-amz-checksum-crc32": "AAAAAA==",
        "x-amz-content-sha256": direct.UNSIGNED_PAYLOAD,
        "x-amz-date": moment.strftime("%Y%m%dT%H%M%SZ"),
        "x-amz-security-token": "token==",
    }
    ours = direct.authorization(
        "PUT",
        path,
        headers,
        access_key="AKIDEXAMPLE",
        secret_key="secret/key+x",
        region="eu-west-3",
        service="s3",
        amz_date=headers["x-amz-date"],
    )
    assert ours == request.headers["Authorization"]
    assert direct.host_header("http://127.0.0.1:80/b/k") == "127.0.0.1"
    assert direct.host_header("http://[::1]:9000/b/k") == "[::1]:9000"


def test_template_is_learnt_only_from_plain_requests():
    key = "a b/c.txt"
    auth = "AWS4-HMAC-SHA256 Credential=AK/20240506/us-east-2/s3/aws4_request, Sig..."
    url = "http://127.0.0.1:9000/bkt/a%20b/c.txt"
    learnt = direct.template_from_request(url, {"Authorization": auth, "Expect": "x"}, key)
    assert learnt == direct.Template(
        "http", "127.0.0.1", 9000, "127.0.0.1:9000", "/bkt/", "us-east-2", "s3", "AK"
    )
    unknown = {"Authorization": auth, "x-amz-server-side-encryption": "aws:kms"}
    assert direct.template_from_request(url, unknown, key) is None
    assert direct.template_from_request(url + "?x=1", {"Authorization": auth}, key) is None
    assert direct.template_from_request(url, {"Authorization": "AWS4-ECDSA-P256"}, key) is None


def test_small_uploads_go_direct_and_fall_back_to_botocore(s3, bucket, tmp_path, via_proxy):
    """Small files after the first are sent by DirectPut; an answer other than 200 sends
    that file again through botocore, and the sync still verifies every ETag."""
    files = {f"d/{i:02d}.bin": os.urandom(100 + i) for i in range(40)}
    write_tree(tmp_path / "src", files)
    counted = []
    original = direct.DirectPut.close

    def close(self):
        counted.append((self.direct, self.fallbacks))
        original(self)

    # Every fifth PUT is answered 503: direct ones go again through botocore (which retries).
    plan = FaultPlan(throttle=[FaultRule(every=5, method="PUT", status=503)])
    proxy = via_proxy(faults=plan)
    try:
        direct.DirectPut.close = close
        result = sync(str(tmp_path / "src"), f"s3://{bucket}/d", concurrency=1)
    finally:
        direct.DirectPut.close = original
    assert result.ok, result.failed
    assert s3_tree(s3.client(), bucket, "d") == files
    sent_direct, fell_back = counted[0]
    # The first file went through botocore; every other was tried directly once.
    assert sent_direct + fell_back == len(files) - 1
    assert fell_back >= 1 and sent_direct >= len(files) // 2
    assert proxy.injected["503 SlowDown"] >= fell_back
    assert {e["checksum"] for e in result.entries} == {expected_etag(d) for d in files.values()}


def test_fast_listing_parser_gives_what_botocore_gives(s3, bucket):
    keys = ["a b/1.txt", "a+b/2.txt", "\u00e9t\u00e9/3.txt", "x&y/4 %.txt", "z/"]
    s3.seed(bucket, {key: key.encode() for key in keys})
    ours, plain = make_client(4), s3.client()
    for options in ({}, {"Delimiter": "/"}, {"Prefix": "a", "MaxKeys": 1}):
        mine = ours.list_objects_v2(Bucket=bucket, **options)
        theirs = plain.list_objects_v2(Bucket=bucket, **options)
        for answer in (mine, theirs):
            answer.pop("ResponseMetadata")
        assert mine == theirs
    assert parse_timestamp("2024-01-02T03:04:05.678Z") == datetime(
        2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC
    )
    assert parse_timestamp("2024-01-02T03:04:05Z").tzinfo is not None
    http_date = parse_timestamp("Tue, 02 Jan 2024 03:04:05 GMT")  # botocore's parser
    assert http_date.timestamp() == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


def test_listing_page_with_an_error_under_200_is_retried(s3, bucket, tmp_path, via_proxy):
    """S3 may answer 200 with an error document; the listing parser, which replaces
    botocore's separate check for it, turns it into a retried 500."""
    s3.seed(bucket, {f"e/{i}.txt": b"x" for i in range(5)})
    fault = FaultRule(first=1, method="GET", status=200, code="InternalError")
    proxy = via_proxy(faults=FaultPlan(throttle=[fault]))
    result = sync(f"s3://{bucket}/e", str(tmp_path / "e"))
    assert result.ok, result.failed
    assert proxy.injected == {"200 InternalError": 1}
    assert sorted(os.listdir(tmp_path / "e")) == [f"{i}.txt" for i in range(5)]


def test_listing_in_parallel_ranges_is_the_plain_listing(s3, bucket, tmp_path, via_proxy):
    """Ranges cut at the local side's paths, listed in parallel, give the bucket's listing
    in order, whatever differs between the sides; one request when the prefix is empty."""
    remote = {f"r/{d}/{i:02d}.txt": b"x" for d in "abcdef" for i in range(10)}
    remote.update({"r/a.txt": b"top", "r/c/extra/deep.txt": b"x", "r/zz/": b""})
    s3.seed(bucket, remote)
    local = {rel[2:]: b"x" for rel in remote if not rel.endswith("/")}
    for gone in ("a/03.txt", "c/extra/deep.txt", "d/09.txt"):
        del local[gone]
    local["b/05b.txt"] = local["e/00a.txt"] = b"only here"
    write_tree(tmp_path / "local", local)
    splits = sample_local(str(tmp_path / "local"), every=6)
    assert splits == sorted(splits) and len(splits) == len(local) // 6
    location = parse_location(f"s3://{bucket}/r")
    client = s3.client()
    expected = sorted(rel[2:] for rel in remote if not rel.endswith("/"))
    proxy = via_proxy()
    client = s3.client(proxy.url)
    original = listing.PAGE_SIZE
    try:
        listing.PAGE_SIZE = 7
        listed = [o.rel for o in list_s3(client, location, splits=splits, parallel=3)]
        assert listed == expected
        assert [o.rel for o in list_s3(client, location)] == expected
        proxy.reset_counts()
        empty = parse_location(f"s3://{bucket}/nothing-here")
        assert list(list_s3(client, empty, splits=splits, parallel=3)) == []
        assert proxy.counts == {"GET": 1}
    finally:
        listing.PAGE_SIZE = original


def test_multipart_upload_is_verified_by_the_composite_crc32(s3, bucket, tmp_path, monkeypatch):
    """A server that answers the composite CRC-32 of a multipart upload (S3 does, moto does
    not) has it compared with the one computed while reading: equal, the file is not read
    again and S3's ETag is cached for the next sync; different, the upload fails."""
    from confluence.sync import engine

    data = os.urandom(BIG + 5)
    write_tree(tmp_path / "src", {"big.bin": data})
    digests = cs.StreamDigests([f"crc32:{cs.PART_SIZE}"])
    digests.update(data)
    composite = digests.result()[f"crc32:{cs.PART_SIZE}"]
    answered = {"value": composite}
    original = engine._answer_of

    def with_checksum(parsed):
        answer = original(parsed)
        if "-" in answer["ETag"]:  # CompleteMultipartUpload, as S3 answers it
            answer["Checksum"] = ("crc32", answered["value"])
        return answer

    def no_rereading(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(engine, "_answer_of", with_checksum)
    monkeypatch.setattr(engine.cs, "hash_file", no_rereading)
    monkeypatch.setattr(engine, "FILE_ATTEMPTS", 1)
    first = sync(str(tmp_path / "src"), f"s3://{bucket}/mp")
    assert first.ok, first.failed
    etag = s3_etags(s3.client(), bucket, "mp")["big.bin"]
    assert etag == expected_etag(data) and first.entries[0]["checksum"] == etag
    again = sync(str(tmp_path / "src"), f"s3://{bucket}/mp")
    assert (again.copied, again.skipped, again.hashed_files) == (0, 1, 0)

    answered["value"] = "AAAAAA==-2"
    (tmp_path / "src" / "big.bin").write_bytes(os.urandom(BIG))
    time.sleep(0.03)
    failed = sync(str(tmp_path / "src"), f"s3://{bucket}/mp")
    assert not failed.ok and "altered on the way" in failed.failed[0][1]


def test_direct_put_that_cannot_connect_leaves_the_file_to_botocore(s3, bucket):
    """A refused connection (or DNS or TLS failure) is a fallback, not a failed file."""
    from confluence.sync.engine import _credentials

    client = make_client(1)
    putter = direct.DirectPut.for_client(client, _credentials(), "test")
    assert putter is not None
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    credentials = _credentials().get_frozen_credentials()
    putter._templates[bucket] = direct.Template(
        "http", "127.0.0.1", closed, f"127.0.0.1:{closed}", f"/{bucket}/", "us-east-1", "s3",
        credentials.access_key,
    )  # fmt: skip
    try:
        assert putter.put(bucket, "k.bin", b"payload") is None
        assert putter.fallbacks == 1 and putter.direct == 0
    finally:
        putter.close()


def test_body_budget_bounds_the_bytes_held_at_once():
    import threading

    from confluence.sync.engine import _ByteBudget

    budget, held, most, lock = _ByteBudget(10), [0], [0], threading.Lock()

    def take(size):
        with budget.hold(size):
            with lock:
                held[0] += min(size, 10)
                most[0] = max(most[0], held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= min(size, 10)

    threads = [threading.Thread(target=take, args=(size,)) for size in [4] * 12 + [25, 0, 7]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)  # a body larger than the budget still goes
    assert 8 <= most[0] <= 10 and budget.free == 10
