"""Where a sync reads or writes: a local directory or an S3 prefix, and relative paths in it.

Relative paths are POSIX (``/``-separated), never empty, absolute, or containing ``.``/``..``
components. An S3 location ``s3://bucket/prefix`` holds the keys ``prefix/<relative path>``,
like ``aws s3 sync`` (the prefix is a folder, not a string prefix).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LocalDir:
    root: str  # absolute, without a trailing separator

    @property
    def is_s3(self) -> bool:
        return False

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def display(self, rel: str | None = None) -> str:
        return self.root if rel is None else self.path(rel)

    def __str__(self) -> str:
        return self.root


@dataclass(frozen=True)
class S3Prefix:
    bucket: str
    prefix: str  # without leading or trailing "/"; "" for the whole bucket

    @property
    def is_s3(self) -> bool:
        return True

    @property
    def list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.list_prefix) :]

    def display(self, rel: str | None = None) -> str:
        if rel is None:
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"s3://{self.bucket}/{self.key(rel)}"

    def __str__(self) -> str:
        return self.display()


Location = LocalDir | S3Prefix


def parse_location(text: str) -> Location:
    """``s3://bucket[/prefix]`` or a local directory path (need not exist yet)."""
    if not text:
        raise ValueError("empty location: give a local directory or s3://bucket/prefix")
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{text!r}: no bucket name; write s3://bucket/prefix")
        prefix = prefix.strip("/")
        if "//" in prefix:
            raise ValueError(f"{text!r}: empty path component in the S3 prefix")
        return S3Prefix(bucket, prefix)
    if "://" in text:
        raise ValueError(f"{text!r}: only local paths and s3:// locations are supported")
    return LocalDir(os.path.abspath(os.path.expanduser(text)))


def check_relative(rel: str) -> str:
    """``rel`` as a clean relative path, or ValueError naming what is wrong with it."""
    cleaned = rel.strip()
    if cleaned.startswith("./"):
        cleaned = cleaned[2:]
    if not cleaned or cleaned.startswith("/") or "\\" in cleaned:
        raise ValueError(f"{rel!r} is not a relative path with '/' separators")
    parts = cleaned.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{rel!r}: empty, '.' or '..' path components are not allowed")
    return cleaned


def local_name_problem(rel: str) -> str | None:
    """Why a relative path taken from an S3 key cannot be a local file, or None if it can."""
    if "\x00" in rel:
        return "the key contains a NUL character, which no local file name can"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "the key has an empty, '.' or '..' path component, which cannot be a local file"
    return None


def overlap(a: Location, b: Location) -> bool:
    """Whether one location contains the other (syncing them would read its own output)."""
    if isinstance(a, LocalDir) and isinstance(b, LocalDir):
        ra, rb = a.root.rstrip(os.sep) + os.sep, b.root.rstrip(os.sep) + os.sep
        return ra.startswith(rb) or rb.startswith(ra)
    if isinstance(a, S3Prefix) and isinstance(b, S3Prefix) and a.bucket == b.bucket:
        pa, pb = a.list_prefix, b.list_prefix
        return pa.startswith(pb) or pb.startswith(pa)
    return False
