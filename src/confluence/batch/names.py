"""AWS Batch resource and job names, derived from the configuration in one place.

The emulator's account set-up, the executor plugin and the infrastructure template all call
these, so the names they use cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re

#: Job definition of the project's own image that publishes a chunk (aws.prefix in front).
PUBLISH = "publish"
MOUNT_ROOT = "/mnt/data"
_ARN = re.compile(r"^arn:aws[a-z-]*:batch:")
_INVALID = re.compile(r"[^A-Za-z0-9_-]+")
MAX_JOB_NAME = 128


def _prefixed(config: dict, name: str) -> str:
    return name if _ARN.match(name) else config["aws"]["prefix"] + name


def queue(config: dict, module: str) -> str:
    """The module's job queue: its ``queue`` (default: its stage), with aws.prefix."""
    return _prefixed(config, config["modules"][module]["queue"])


def job_definition(config: dict, module: str) -> str:
    """The module's registered job definition (name, name:revision or ARN)."""
    return _prefixed(config, config["modules"][module]["job_definition"])


def publish_job_definition(config: dict) -> str:
    return _prefixed(config, PUBLISH)


def queues(config: dict) -> list[str]:
    """Every queue the modules use, in configuration order, without repeats."""
    return list(dict.fromkeys(queue(config, m) for m in config["modules"]))


def image(config: dict, reference: str) -> str:
    return config.get("image_registry", "") + reference


def project_image(config: dict) -> str:
    return image(config, config["aws"]["project_image"])


def module_image(config: dict, module: str) -> str:
    """The image of a module's job definition: the project image for every module with
    aws.project_image_for_modules, else the module's own."""
    if config["aws"].get("project_image_for_modules"):
        return project_image(config)
    return image(config, config["modules"][module]["image"])


def publish_mounts(config: dict) -> list[dict]:
    """The publish job's mounts: every file system at /mnt/data/<name>."""
    return [
        {"filesystem": fs, "subpath": "", "path": f"{MOUNT_ROOT}/{fs}"}
        for fs in config["filesystems"]
    ]


def job_name(run: str, module: str, unit: str, kind: str = "items") -> str:
    """Deterministic Batch job name of one chunk job: ``<run>_<module>_<unit>_<kind>``.

    At most 128 letters, digits, ``-`` and ``_``; a longer name keeps its start and ends in
    a digest of the whole, so two chunk jobs never share a name.
    """
    name = _INVALID.sub("-", f"{run}_{module}_{unit}_{kind}")
    if len(name) > MAX_JOB_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: MAX_JOB_NAME - 13]}-{digest}"
    return name


def podaac_rule(config: dict) -> str:
    """EventBridge rule of the PO.DAAC credentials renewal schedule, with aws.prefix."""
    return config["aws"]["prefix"] + "podaac-credentials"
