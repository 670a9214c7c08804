"""Local stand-ins for EFS mounts: one directory per file system, a mount tree per job.

In a container, file system ``flpe`` sub-path ``geobam`` is mounted at ``/mnt/data/output``.
Locally the file system is ``<efs>/flpe``, and a job gets its own mount root where
``output`` is a symlink to ``<efs>/flpe/geobam``, so the module sees the same relative tree.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from confluence.contract import DEFAULT_MOUNT_ROOT

CONTAINER_ROOT = PurePosixPath(DEFAULT_MOUNT_ROOT)


def relative_mount_path(container_path: str) -> PurePosixPath:
    """``/mnt/data/input`` -> ``input``; ``/mnt/data`` -> ``.``."""
    path = PurePosixPath(container_path)
    try:
        return path.relative_to(CONTAINER_ROOT)
    except ValueError:
        raise ValueError(
            f"container path {container_path} is not under {CONTAINER_ROOT}; local runs can "
            f"only map mounts below the mount root"
        ) from None


def source_dir(mount: dict, efs: Path) -> Path:
    return Path(efs) / mount["filesystem"] / mount.get("subpath", "")


def build_mount_root(mounts: list[dict], efs: Path, job_dir: Path) -> Path:
    """Create the job's mount tree under ``job_dir`` and return its root."""
    root = Path(job_dir) / "data"
    root.parent.mkdir(parents=True, exist_ok=True)
    for mount in mounts:
        source = source_dir(mount, efs)
        source.mkdir(parents=True, exist_ok=True)
        relative = relative_mount_path(mount["path"])
        if relative == PurePosixPath("."):
            # A mount at the root is the whole tree (config validation allows it only alone).
            root.symlink_to(source.resolve(), target_is_directory=True)
            return root
        link = root / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.resolve(), target_is_directory=True)
    root.mkdir(parents=True, exist_ok=True)
    return root


def to_local(container_path: str, mounts: list[dict], efs: Path) -> Path:
    """The local file behind a container path, through the mount that holds it."""
    path = PurePosixPath(container_path)
    best = None
    for mount in mounts:
        mount_path = PurePosixPath(mount["path"])
        if path == mount_path or mount_path in path.parents:
            if best is None or len(mount_path.parts) > len(PurePosixPath(best["path"]).parts):
                best = mount
    if best is None:
        raise ValueError(f"{container_path} is not under any of the module's mounts")
    return source_dir(best, efs) / path.relative_to(PurePosixPath(best["path"]))
