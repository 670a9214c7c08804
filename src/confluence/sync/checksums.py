"""Digests of file contents in the forms S3 stores, computed in one pass over the bytes.

A digest *kind* names what to compute:

- ``"md5"``: hex MD5 of the whole content, the ETag of a single-part upload;
- ``"etag:P"``: the ETag of a multipart upload with parts of P bytes,
  ``md5(md5(part 1) + md5(part 2) + ...)-N``;
- ``"sha256"``: base64 SHA-256 of the whole content (S3's ``ChecksumSHA256``);
- ``"sha256:P"``: S3's composite checksum of a multipart upload with parts of P bytes,
  ``base64(sha256(sha256(part 1) + ...))-N``;
- ``"crc32"``: base64 big-endian CRC-32 of the whole content (S3's full-object ``ChecksumCRC32``);
- ``"crc32:P"``: S3's composite CRC-32 of a multipart upload with parts of P bytes (botocore's
  default checksum), ``base64(crc32(crc32(part 1) + ...))-N``.

The engine uploads with a fixed part size (:data:`PART_SIZE`, adjusted the way s3transfer
adjusts it for files of more than 10,000 parts), so the ETag its uploads get is known in
advance: :func:`upload_kind`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import zlib
from collections.abc import Iterable

from s3transfer.utils import ChunksizeAdjuster

MiB = 1024 * 1024
# The aws CLI's defaults too, so objects it uploaded with default settings get the same ETags
# as ours and compare without any extra request.
MULTIPART_THRESHOLD = 8 * MiB
PART_SIZE = 8 * MiB
# Largest object a single CopyObject can copy.
MAX_SINGLE_COPY = 5 * 1024 * MiB

_READ_BLOCK = 1 * MiB
_HEX_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")
_ADJUSTER = ChunksizeAdjuster()


def part_size_for(size: int) -> int:
    """The part size s3transfer uses for a multipart transfer of ``size`` bytes."""
    return _ADJUSTER.adjust_chunksize(PART_SIZE, size)


def is_multipart(size: int) -> bool:
    """Whether s3transfer uploads (and copies, downloads) ``size`` bytes in parts."""
    return size >= MULTIPART_THRESHOLD


def parts_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def upload_kind(size: int) -> str:
    """The digest kind equal to the ETag an upload of ``size`` bytes by this engine gets."""
    return f"etag:{part_size_for(size)}" if is_multipart(size) else "md5"


def normalize_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"').lower()


def multipart_etag_parts(etag: str) -> int | None:
    """N for a multipart ETag ``<md5>-N``, else None."""
    match = _MULTIPART_ETAG.match(normalize_etag(etag))
    return int(match.group(2)) if match else None


def is_md5_etag(etag: str) -> bool:
    return bool(_HEX_MD5.match(normalize_etag(etag)))


def kind_for_etag(etag: str, size: int) -> str | None:
    """The digest kind an ETag equals for unchanged content, when the listing alone tells.

    A plain ETag is the MD5 (unless the object is SSE-KMS or SSE-C encrypted, which only a
    HEAD reveals: a mismatch is then checked further). A multipart ETag matches ``etag:P`` for
    this engine's part size when its part count is the one that part size gives; otherwise
    the part size is unknown and None is returned.
    """
    if is_md5_etag(etag):
        return "md5"
    parts = multipart_etag_parts(etag)
    if parts is None:
        return None
    part_size = part_size_for(size)
    return f"etag:{part_size}" if parts_count(size, part_size) == parts else None


def describe_kind(kind: str) -> tuple[str, int | None]:
    """(name for manifests, part size or None): md5, s3-multipart-etag, sha256, ..."""
    name, _, part = kind.partition(":")
    size = int(part) if part else None
    if name == "etag":
        return "s3-multipart-etag", size
    if part:
        return f"{name}-composite", size
    return name, None


class StreamDigests:
    """Digests of one byte stream, fed in order with :meth:`update`."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = sorted(set(kinds))
        self.count = 0
        self._md5 = hashlib.md5() if "md5" in self.kinds else None
        self._sha256 = hashlib.sha256() if "sha256" in self.kinds else None
        self._crc32 = 0 if "crc32" in self.kinds else None
        # part size -> {algorithm: [finished part digests], ...} plus the running part.
        self._parted: dict[int, dict] = {}
        for kind in self.kinds:
            name, _, part = kind.partition(":")
            if not part:
                if name not in ("md5", "sha256", "crc32"):
                    raise ValueError(f"unknown digest kind {kind!r}")
                continue
            if name not in ("etag", "sha256", "crc32"):
                raise ValueError(f"unknown digest kind {kind!r}")
            state = self._parted.setdefault(int(part), {"algorithms": set(), "done": {}})
            state["algorithms"].add("md5" if name == "etag" else name)
        for state in self._parted.values():
            state["done"] = {a: [] for a in state["algorithms"]}
            state["running"] = {a: _hasher(a) for a in state["algorithms"]}
            state["filled"] = 0

    def update(self, data) -> None:
        if not data:
            return
        self.count += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        if self._sha256 is not None:
            self._sha256.update(data)
        if self._crc32 is not None:
            self._crc32 = zlib.crc32(data, self._crc32)
        if self._parted:
            view = memoryview(data)
            for part_size, state in self._parted.items():
                self._update_parts(part_size, state, view)

    @staticmethod
    def _update_parts(part_size: int, state: dict, view: memoryview) -> None:
        while len(view):
            room = part_size - state["filled"]
            piece, view = view[:room], view[room:]
            for hasher in state["running"].values():
                hasher.update(piece)
            state["filled"] += len(piece)
            if state["filled"] == part_size:
                for algorithm, hasher in state["running"].items():
                    state["done"][algorithm].append(hasher.digest())
                    state["running"][algorithm] = _hasher(algorithm)
                state["filled"] = 0

    def result(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._md5 is not None:
            out["md5"] = self._md5.hexdigest()
        if self._sha256 is not None:
            out["sha256"] = base64.b64encode(self._sha256.digest()).decode()
        if self._crc32 is not None:
            out["crc32"] = base64.b64encode(self._crc32.to_bytes(4, "big")).decode()
        for part_size, state in self._parted.items():
            for algorithm in state["algorithms"]:
                parts = list(state["done"][algorithm])
                # The last, shorter part; an empty stream is one empty part.
                if state["filled"] or not parts:
                    parts.append(state["running"][algorithm].digest())
                combined = _hasher(algorithm)
                combined.update(b"".join(parts))
                if algorithm == "md5":
                    out[f"etag:{part_size}"] = f"{combined.hexdigest()}-{len(parts)}"
                else:
                    encoded = base64.b64encode(combined.digest()).decode()
                    out[f"{algorithm}:{part_size}"] = f"{encoded}-{len(parts)}"
        return out


class _Crc32:
    """CRC-32 with hashlib's update/digest interface (big-endian digest, as S3 has it)."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def _hasher(algorithm: str):
    return _Crc32() if algorithm == "crc32" else hashlib.new(algorithm)


def hash_file(path: str, kinds: Iterable[str], fd: int | None = None) -> tuple[dict[str, str], int]:
    """Digests of a file (read from ``fd`` at offset 0 if given), and the bytes read."""
    digests = StreamDigests(kinds)
    buffer = bytearray(_READ_BLOCK)
    view = memoryview(buffer)
    if fd is not None:
        offset = 0
        while n := os.preadv(fd, [view], offset):
            digests.update(view[:n])
            offset += n
        return digests.result(), digests.count
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view):
            digests.update(view[:n])
    return digests.result(), digests.count


# Checksums S3 may answer with that a local file can be hashed for here, by preference.
_COMPUTABLE = (("sha256", "ChecksumSHA256"), ("crc32", "ChecksumCRC32"))


def answered_checksum(answer: dict) -> tuple[str, str] | None:
    """(algorithm, value) of the checksum in an upload's or copy's answer, which S3 checked
    against the bytes it received before storing them: "crc32" or "sha256", the value with
    "-N" for a composite checksum of N parts; None when there is none of them."""
    for algorithm, key in _COMPUTABLE:
        if answer.get(key):
            return algorithm, answer[key]
    return None


def stored_checksum(head: dict, etag: str) -> tuple[str, str, int | None] | None:
    """The checksum S3 stores for an object, from a HEAD with ``ChecksumMode=ENABLED``.

    Returns (algorithm, value without any ``-N`` suffix, N for a composite checksum of N parts
    or None for a full-object one), for the algorithms a local file can be hashed with here
    (SHA-256, CRC-32); None when the object has none of them.
    """
    checksum_type = (head.get("ChecksumType") or "").upper()
    multipart = multipart_etag_parts(etag)
    for algorithm, key in _COMPUTABLE:
        value = head.get(key)
        if not value:
            continue
        value, _, suffix = value.partition("-")
        if suffix:
            return algorithm, value, int(suffix)
        if checksum_type == "FULL_OBJECT" or (multipart is None and checksum_type != "COMPOSITE"):
            return algorithm, value, None
        if multipart is not None and (algorithm == "sha256" or checksum_type == "COMPOSITE"):
            # SHA-256 of a multipart upload is always composite (some servers omit the "-N").
            return algorithm, value, multipart
        return None
    return None
