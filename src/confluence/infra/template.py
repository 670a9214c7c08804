"""``confluence infra template``: the CloudFormation template of a configuration.

:func:`render` turns a validated configuration into a template (a dict; :func:`to_yaml`
writes it) holding every AWS resource a Batch run needs:

- IAM: the Batch service role, the task execution role (its log group and ECR repositories
  only) and one job role per module and for the publish job. A job role may mount exactly
  the EFS access points its job mounts; the publish role may also write under the
  storage.publish prefix; modules get no S3 at all;
- one Fargate (or Fargate Spot, ``aws.spot_queues``) compute environment and one job queue
  per queue the modules use; the queues cancel jobs stuck in RUNNABLE for a reason that
  never resolves itself (``aws.runnable_timeout_seconds``);
- one job definition per module and the project image's publish job definition: image,
  vCPU and memory, EFS volumes through access points (transit encryption, IAM
  authorization), retries of Spot reclaims only, the per-attempt timeout, awslogs, tags;
- one encrypted, elastic-throughput EFS file system per ``filesystems`` entry with a mount
  target in every subnet and one access point per (file system, folder) that is mounted;
- the buckets of storage.inputs/publish/state that are s3:// URLs (encrypted, versioned,
  private) and the jobs' log group;
- with ``aws.podaac.enabled``: the PO.DAAC credential renewal (see :func:`podaac_fragment`).

Names come from :mod:`confluence.batch.names` with the ``Prefix`` parameter (default
aws.prefix) in place of the prefix, so a template can be deployed under another prefix as
long as the controller's configuration says the same one. Parameters also take the subnets
and security groups, image tags and the log retention.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from confluence import podaac
from confluence.batch import names
from confluence.infra.entrypoint import ENV_MODULE

#: Retry Spot reclaims (EC2 and Fargate wordings), exit on anything else: an application
#: error would only fail again. AWS evaluates the conditions in order. (API spelling.)
EVALUATE_ON_EXIT = [
    {"onStatusReason": "Host EC2*", "action": "RETRY"},
    {"onStatusReason": "Your Spot Task was interrupted*", "action": "RETRY"},
    {"onReason": "*", "action": "EXIT"},
]
#: RUNNABLE status reasons that AWS Batch can act on; none of them resolves itself soon.
RUNNABLE_REASONS = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
)
COMPUTE_MAX_VCPUS = 1000
PUBLISH_VCPU, PUBLISH_MEMORY_MIB = 1, 2048
#: Publication is idempotent, so a reclaimed attempt may run again.
PUBLISH_ATTEMPTS, PUBLISH_TIMEOUT_SECONDS = 3, 3600
DEFAULT_SUBNET_COUNT = 2
MAX_RESOURCES = 500
DEFAULT_LOG_RETENTION_DAYS = 90
#: Where Batch sends a job's output when its job definition names no log group.
BATCH_LOG_GROUP = "/aws/batch/job"
LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827]
#: Tags that map resources back to the configuration (the emulator reads FILESYSTEM_TAG).
FILESYSTEM_TAG = "confluence:filesystem"
MODULE_TAG = "confluence:module"
QUEUE_TAG = "confluence:queue"
#: Jobs may mount, write and act as root (the images run as root), through their access
#: points only.
EFS_CLIENT_ACTIONS = [
    "elasticfilesystem:ClientMount",
    "elasticfilesystem:ClientWrite",
    "elasticfilesystem:ClientRootAccess",
]
#: What a publication does under its prefix: check, upload (multipart too), never delete.
PUBLISH_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
VERSION = "2012-10-17"
PREFIX_PARAMETER = "Prefix"
PREFIX_REF = "${Prefix}"
_ECR_IMAGE = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
    r"(?P<repository>[^:@]+)"
)
_WORD = re.compile(r"[A-Za-z0-9]+")


class TemplateError(ValueError):
    """The configuration cannot be rendered; the message says which key and why."""


# --- names --------------------------------------------------------------------------------


def compute_environment_name(queue: str) -> str:
    """The compute environment behind a queue (names need 3+ characters ending in a letter
    or digit)."""
    return f"{queue}-ce"


def stack_name(config: dict) -> str:
    """The stack the emulator deploys (and the README suggests): ``<prefix>confluence``."""
    name = re.sub(r"[^A-Za-z0-9-]", "-", config["aws"]["prefix"] + "confluence")
    return name if name[0].isalpha() else "c" + name


def _with_prefix_parameter(config: dict) -> dict:
    """The configuration with ``${Prefix}`` as aws.prefix: names.py then spells every name
    as an Fn::Sub string."""
    named = dict(config)
    named["aws"] = {**config["aws"], "prefix": PREFIX_REF}
    return named


def _sub(text: str):
    return {"Fn::Sub": text} if "${" in text else text


def _arn(service: str, resource: str) -> dict:
    """An ARN of this stack's partition, Region and account."""
    here = "${AWS::Partition}:" + service + ":${AWS::Region}:${AWS::AccountId}"
    return {"Fn::Sub": f"arn:{here}:{resource}"}


def _title(text: str) -> str:
    words = _WORD.findall(text)
    return "".join(w[0].upper() + w[1:] for w in words) or "Root"


def _tags(tags: dict) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# --- pure helpers the emulator, preflight and tests share ---------------------------------


def module_environment(config: dict, module: str) -> dict[str, str]:
    """Environment variables of a module's job definition."""
    if config["aws"].get("project_image_for_modules"):
        return {ENV_MODULE: module}
    return {}


def s3_location(url: str | None) -> tuple[str, str] | None:
    """(bucket, prefix without slashes) of an s3:// URL; None for a local folder or null."""
    if not url or not url.startswith("s3://"):
        return None
    parts = urlsplit(url)
    return parts.netloc, parts.path.strip("/")


def buckets(config: dict) -> list[str]:
    """Buckets named by storage.inputs, storage.publish and storage.state (s3:// URLs)."""
    found = []
    for key in ("inputs", "publish", "state"):
        location = s3_location(config["storage"].get(key))
        if location and location[0] and location[0] not in found:
            found.append(location[0])
    return found


def _is_reference(name: str) -> bool:
    """A job definition given as an ARN or name:revision exists outside the template."""
    return name.startswith("arn:") or ":" in name


def _split_image(reference: str) -> tuple[str, str | None]:
    """(repository, tag) of an image reference; tag None for a digest (cannot be retagged)."""
    if "@" in reference:
        return reference, None
    if ":" in reference.rsplit("/", 1)[-1]:
        repository, tag = reference.rsplit(":", 1)
        return repository, tag
    return reference, "latest"


def _vcpu(value) -> str:
    return f"{float(value):g}"


def _unique_mounts(mounts: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((m["filesystem"], m.get("subpath", "").strip("/")) for m in mounts))


# --- the template -------------------------------------------------------------------------


class _Builder:
    """Collects resources under unique logical IDs while rendering one configuration."""

    def __init__(self, config: dict, subnet_count: int) -> None:
        self.config = config
        self.named = _with_prefix_parameter(config)
        self.subnet_count = subnet_count
        self.parameters: dict = {}
        self.conditions: dict = {}
        self.resources: dict = {}
        self.outputs: dict = {}
        self._keys: dict[str, tuple] = {}
        self.log_group = config["aws"]["log_group"]

    # -- logical IDs -----------------------------------------------------------------------

    def logical_id(self, kind: str, *parts: str) -> str:
        """``kind`` + the parts in CamelCase; parts that collapse onto another's ID (a_b and
        ab_ both give AB) get a digest, so every configuration key keeps its own ID."""
        key = (kind, *parts)
        found = next((i for i, k in self._keys.items() if k == key), None)
        if found:
            return found
        candidate = kind + "".join(_title(p) for p in parts)
        if candidate in self._keys:
            candidate += hashlib.sha256("/".join(key).encode()).hexdigest()[:8]
        self._keys[candidate] = key
        return candidate

    def add(self, logical_id: str, kind: str, properties: dict, **extra) -> str:
        self.resources[logical_id] = {"Type": kind, **extra, "Properties": properties}
        return logical_id

    # -- parameters ------------------------------------------------------------------------

    def add_parameters(self) -> None:
        aws = self.config["aws"]
        self.parameters["SubnetIds"] = {
            "Type": "List<AWS::EC2::Subnet::Id>",
            "Description": (
                f"Exactly {self.subnet_count} subnet(s), one per Availability Zone: the tasks "
                "run there and every file system gets a mount target in each (render with "
                "--subnet-count for another number). Private subnets need a NAT gateway or "
                "VPC endpoints for ECR, S3 and CloudWatch Logs."
            ),
        }
        self.parameters["SecurityGroupIds"] = {
            "Type": "List<AWS::EC2::SecurityGroup::Id>",
            "Description": (
                "Security groups of the tasks and of the EFS mount targets: NFS (TCP 2049) "
                "between them, HTTPS out."
            ),
        }
        self.parameters[PREFIX_PARAMETER] = {
            "Type": "String",
            "Default": aws["prefix"],
            "AllowedPattern": "^[A-Za-z0-9_-]{0,40}$",
            "Description": (
                "In front of every queue, job definition, compute environment and file system "
                "name; the controller's configuration must say the same aws.prefix."
            ),
        }
        tag = {
            "Type": "String",
            "Default": "",
            "AllowedPattern": "^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$",
        }
        if not aws.get("project_image_for_modules"):
            self.parameters["ModuleImageTag"] = {
                **tag,
                "Description": "Tag of every module image (a release); empty: the "
                "configuration's tags.",
            }
            self.conditions["ConfiguredModuleTags"] = {
                "Fn::Equals": [{"Ref": "ModuleImageTag"}, ""]
            }
        self.parameters["ProjectImageTag"] = {
            **tag,
            "Description": "Tag of the project image; empty: the configuration's tag.",
        }
        self.conditions["ConfiguredProjectTag"] = {"Fn::Equals": [{"Ref": "ProjectImageTag"}, ""]}
        self.parameters["AssignPublicIp"] = {
            "Type": "String",
            "Default": "DISABLED",
            "AllowedValues": ["ENABLED", "DISABLED"],
            "Description": "ENABLED for public subnets without a NAT gateway (the tasks must "
            "reach ECR, S3 and CloudWatch Logs).",
        }
        self.parameters["LogRetentionDays"] = {
            "Type": "Number",
            "Default": DEFAULT_LOG_RETENTION_DAYS,
            "AllowedValues": LOG_RETENTION_DAYS,
            "Description": "Days CloudWatch Logs keeps the jobs' output.",
        }
        # Batch's default group exists in every account that has run a Batch job.
        batch_default = self.log_group == BATCH_LOG_GROUP
        self.parameters["CreateLogGroup"] = {
            "Type": "String",
            "Default": "false" if batch_default else "true",
            "AllowedValues": ["true", "false"],
            "Description": f"true to create the log group {self.log_group}; false when it "
            "exists already.",
        }
        self.conditions["CreateLogGroup"] = {"Fn::Equals": [{"Ref": "CreateLogGroup"}, "true"]}
        if buckets(self.config):
            self.parameters["CreateBuckets"] = {
                "Type": "String",
                "Default": "true",
                "AllowedValues": ["true", "false"],
                "Description": "false when the buckets of storage.inputs, storage.publish and "
                f"storage.state exist already ({', '.join(buckets(self.config))}).",
            }
            self.conditions["CreateBuckets"] = {"Fn::Equals": [{"Ref": "CreateBuckets"}, "true"]}

    def image(self, reference: str, *, project: bool) -> object:
        """The image, retagged when the tag parameter is set."""
        parameter, condition = (
            ("ProjectImageTag", "ConfiguredProjectTag")
            if project
            else ("ModuleImageTag", "ConfiguredModuleTags")
        )
        repository, tag = _split_image(reference)
        if tag is None:
            return reference
        return {"Fn::If": [condition, reference, {"Fn::Sub": f"{repository}:${{{parameter}}}"}]}

    # -- IAM -------------------------------------------------------------------------------

    @staticmethod
    def _trust(service: str, *, source_account: bool = False) -> dict:
        statement = {
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sts:AssumeRole",
        }
        if source_account:
            # Only tasks started for this account may take the role (confused deputy).
            statement["Condition"] = {
                "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
                "ArnLike": {"aws:SourceArn": _arn("ecs", "*")},
            }
        return {"Version": VERSION, "Statement": [statement]}

    def _role(self, logical_id: str, service: str, statements: list, tags: dict, **kw) -> str:
        properties: dict = {
            "AssumeRolePolicyDocument": self._trust(
                service, source_account=service == "ecs-tasks.amazonaws.com"
            ),
            "Tags": _tags(tags),
        }
        properties.update(kw)
        if statements:
            properties["Policies"] = [
                {
                    "PolicyName": "confluence",
                    "PolicyDocument": {"Version": VERSION, "Statement": statements},
                }
            ]
        return self.add(logical_id, "AWS::IAM::Role", properties)

    def add_service_roles(self, images: list[str]) -> None:
        self._role(
            "BatchServiceRole",
            "batch.amazonaws.com",
            [],
            {"confluence:role": "batch-service"},
            ManagedPolicyArns=[
                {
                    "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
                    "AWSBatchServiceRole"
                }
            ],
        )
        statements = [
            {
                "Sid": "JobLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": _arn("logs", f"log-group:{self.log_group}:log-stream:*"),
            }
        ]
        repositories = []
        for reference in images:
            match = _ECR_IMAGE.match(reference)
            if match:
                arn = {
                    "Fn::Sub": f"arn:${{AWS::Partition}}:ecr:{match['region']}:{match['account']}"
                    f":repository/{match['repository']}"
                }
                if arn not in repositories:
                    repositories.append(arn)
        if repositories:
            statements += [
                # The token call has no resource; the pulls are limited to the images used.
                {
                    "Sid": "EcrLogin",
                    "Effect": "Allow",
                    "Action": "ecr:GetAuthorizationToken",
                    "Resource": "*",
                },
                {
                    "Sid": "EcrPull",
                    "Effect": "Allow",
                    "Action": [
                        "ecr:BatchCheckLayerAvailability",
                        "ecr:BatchGetImage",
                        "ecr:GetDownloadUrlForLayer",
                    ],
                    "Resource": repositories,
                },
            ]
        self._role(
            "TaskExecutionRole",
            "ecs-tasks.amazonaws.com",
            statements,
            {"confluence:role": "task-execution"},
        )

    def efs_statements(self, mounts: list[dict]) -> list[dict]:
        """Mount the access points of ``mounts``, nothing else of their file systems."""
        points: dict[str, list] = {}
        for filesystem, subpath in _unique_mounts(mounts):
            point = self.logical_id("AccessPoint", filesystem, subpath)
            points.setdefault(filesystem, []).append({"Fn::GetAtt": [point, "Arn"]})
        return [
            {
                "Sid": f"Mount{self.logical_id('FileSystem', filesystem)}",
                "Effect": "Allow",
                "Action": EFS_CLIENT_ACTIONS,
                "Resource": {"Fn::GetAtt": [self.logical_id("FileSystem", filesystem), "Arn"]},
                "Condition": {
                    "StringEquals": {
                        "elasticfilesystem:AccessPointArn": arns[0] if len(arns) == 1 else arns
                    }
                },
            }
            for filesystem, arns in points.items()
        ]

    @staticmethod
    def s3_write_statements(url: str, sid: str) -> list[dict]:
        """List, read and write under the prefix of ``url`` (no delete)."""
        bucket, prefix = s3_location(url)
        bucket_arn = {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{bucket}"}
        objects = f"arn:${{AWS::Partition}}:s3:::{bucket}/{prefix + '/' if prefix else ''}*"
        listing: dict = {
            "Sid": f"{sid}List",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
        }
        if prefix:
            listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
        return [
            listing,
            {
                "Sid": f"{sid}Objects",
                "Effect": "Allow",
                "Action": PUBLISH_OBJECT_ACTIONS,
                "Resource": {"Fn::Sub": objects},
            },
        ]

    # -- EFS -------------------------------------------------------------------------------

    def add_file_systems(self, used: list[tuple[str, str]]) -> None:
        account_root = {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
        for filesystem in self.config["filesystems"]:
            fs_id = self.logical_id("FileSystem", filesystem)
            policy = {
                "Version": VERSION,
                "Statement": [
                    {
                        "Sid": "DenyPlainNfs",
                        "Effect": "Deny",
                        "Principal": {"AWS": "*"},
                        "Action": "*",
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    },
                    # Principals of this account, as far as their own policies allow: the job
                    # roles through their access points, an operator's role for staging.
                    {
                        "Sid": "AccountIdentityPolicies",
                        "Effect": "Allow",
                        "Principal": {"AWS": account_root},
                        "Action": EFS_CLIENT_ACTIONS,
                        "Condition": {"Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"}},
                    },
                ],
            }
            self.add(
                fs_id,
                "AWS::EFS::FileSystem",
                {
                    "Encrypted": True,
                    "PerformanceMode": "generalPurpose",
                    # Bursting throughput collapses under many parallel jobs.
                    "ThroughputMode": "elastic",
                    "FileSystemPolicy": policy,
                    "FileSystemTags": _tags(
                        {
                            "Name": _sub(f"{PREFIX_REF}{filesystem}"),
                            FILESYSTEM_TAG: filesystem,
                        }
                    ),
                },
                # Results and inputs outlive the stack.
                DeletionPolicy="Retain",
                UpdateReplacePolicy="Retain",
            )
            for index in range(self.subnet_count):
                self.add(
                    self.logical_id("MountTarget", filesystem, str(index)),
                    "AWS::EFS::MountTarget",
                    {
                        "FileSystemId": {"Ref": fs_id},
                        "SubnetId": {"Fn::Select": [index, {"Ref": "SubnetIds"}]},
                        "SecurityGroups": {"Ref": "SecurityGroupIds"},
                    },
                )
            self.outputs[f"{fs_id}Id"] = {
                "Description": f"EFS file system {filesystem}",
                "Value": {"Ref": fs_id},
            }
        for filesystem, subpath in used:
            root: dict = {"Path": "/" + subpath}
            if subpath:
                # Created on first mount, owned by root like the rest of the tree.
                root["CreationInfo"] = {"OwnerUid": "0", "OwnerGid": "0", "Permissions": "0755"}
            self.add(
                self.logical_id("AccessPoint", filesystem, subpath),
                "AWS::EFS::AccessPoint",
                {
                    "FileSystemId": {"Ref": self.logical_id("FileSystem", filesystem)},
                    "RootDirectory": root,
                    "AccessPointTags": _tags(
                        {
                            "Name": _sub(f"{PREFIX_REF}{filesystem}/{subpath}".rstrip("/")),
                            FILESYSTEM_TAG: filesystem,
                        }
                    ),
                },
            )

    def volumes(self, mounts: list[dict]) -> tuple[list, list]:
        """Volumes (one per file system folder, through its access point) and mount points."""
        volumes, points, seen = [], [], {}
        for mount in mounts:
            key = (mount["filesystem"], mount.get("subpath", "").strip("/"))
            if key not in seen:
                taken = {k[0] for k in seen}
                seen[key] = key[0] if key[0] not in taken else f"{key[0]}-{len(seen)}"
                volumes.append(
                    {
                        "Name": seen[key],
                        "EfsVolumeConfiguration": {
                            "FileSystemId": {"Ref": self.logical_id("FileSystem", key[0])},
                            "TransitEncryption": "ENABLED",
                            "AuthorizationConfig": {
                                "AccessPointId": {"Ref": self.logical_id("AccessPoint", *key)},
                                "Iam": "ENABLED",
                            },
                        },
                    }
                )
            points.append(
                {"SourceVolume": seen[key], "ContainerPath": mount["path"], "ReadOnly": False}
            )
        return volumes, points

    # -- Batch -----------------------------------------------------------------------------

    def add_queues(self) -> None:
        config = self.config
        spot = set(config["aws"].get("spot_queues") or [])
        # Queue as the modules name it -> its full name (with ${Prefix}), from names.py.
        queues: dict[str, str] = {}
        for module, spec in config["modules"].items():
            queues.setdefault(spec["queue"], names.queue(self.named, module))
        unknown = sorted(spot - set(queues))
        if unknown:
            raise TemplateError(
                f"config key aws.spot_queues: {', '.join(unknown)} is no module's queue; "
                f"the modules use {', '.join(queues)}"
            )
        timeout = config["aws"].get("runnable_timeout_seconds")
        for queue, name in queues.items():
            if queue.startswith("arn:"):
                continue  # a queue outside this template
            environment = self.add(
                self.logical_id("ComputeEnvironment", queue),
                "AWS::Batch::ComputeEnvironment",
                {
                    "ComputeEnvironmentName": _sub(compute_environment_name(name)),
                    "Type": "MANAGED",
                    "State": "ENABLED",
                    "ServiceRole": {"Fn::GetAtt": ["BatchServiceRole", "Arn"]},
                    "ComputeResources": {
                        "Type": "FARGATE_SPOT" if queue in spot else "FARGATE",
                        "MaxvCpus": COMPUTE_MAX_VCPUS,
                        "Subnets": {"Ref": "SubnetIds"},
                        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
                    },
                    "Tags": {QUEUE_TAG: queue},
                },
            )
            properties: dict = {
                "JobQueueName": _sub(name),
                "State": "ENABLED",
                "Priority": 1,
                "ComputeEnvironmentOrder": [
                    {"Order": 1, "ComputeEnvironment": {"Ref": environment}}
                ],
                "Tags": {QUEUE_TAG: queue},
            }
            if timeout is not None:
                properties["JobStateTimeLimitActions"] = [
                    {
                        "Action": "CANCEL",
                        "MaxTimeSeconds": int(timeout),
                        "Reason": reason,
                        "State": "RUNNABLE",
                    }
                    for reason in RUNNABLE_REASONS
                ]
            self.add(self.logical_id("JobQueue", queue), "AWS::Batch::JobQueue", properties)

    def add_job_definition(
        self,
        key: str,
        name: str,
        image,
        vcpu,
        memory_mib: int,
        command: list[str],
        mounts: list[dict],
        environment: dict[str, str],
        attempts: int,
        timeout: int,
        role: str,
    ) -> None:
        volumes, points = self.volumes(mounts)
        container = {
            "Image": image,
            "Command": list(command),
            "ResourceRequirements": [
                {"Type": "VCPU", "Value": _vcpu(vcpu)},
                {"Type": "MEMORY", "Value": str(int(memory_mib))},
            ],
            "ExecutionRoleArn": {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]},
            "JobRoleArn": {"Fn::GetAtt": [role, "Arn"]},
            "Volumes": volumes,
            "MountPoints": points,
            "NetworkConfiguration": {"AssignPublicIp": {"Ref": "AssignPublicIp"}},
            "FargatePlatformConfiguration": {"PlatformVersion": "LATEST"},
            "LogConfiguration": {
                "LogDriver": "awslogs",
                "Options": {
                    "awslogs-group": self.log_group,
                    "awslogs-region": {"Ref": "AWS::Region"},
                },
            },
        }
        if environment:
            container["Environment"] = [{"Name": k, "Value": v} for k, v in environment.items()]
        self.add(
            self.logical_id("JobDefinition", key),
            "AWS::Batch::JobDefinition",
            {
                "JobDefinitionName": _sub(name),
                "Type": "container",
                "PlatformCapabilities": ["FARGATE"],
                "ContainerProperties": container,
                "RetryStrategy": {
                    "Attempts": int(attempts),
                    "EvaluateOnExit": [
                        {k[0].upper() + k[1:]: v for k, v in condition.items()}
                        for condition in EVALUATE_ON_EXIT
                    ],
                },
                "Timeout": {"AttemptDurationSeconds": int(timeout)},
                "PropagateTags": True,
                "Tags": {MODULE_TAG: key},
            },
        )

    def add_jobs(self) -> None:
        config = self.config
        for module, spec in config["modules"].items():
            if module == names.PUBLISH:
                raise TemplateError(
                    f"config key modules.{module}: the name {names.PUBLISH} is taken by the "
                    "project's publish job definition; rename the module"
                )
            if spec.get("platform", "FARGATE") != "FARGATE":
                raise TemplateError(
                    f"config key modules.{module}.platform: {spec['platform']}; the template "
                    "renders Fargate compute environments only"
                )
            if _is_reference(names.job_definition(config, module)):
                continue  # registered outside the template, with its own role
            statements = self.efs_statements(spec["mounts"]) + podaac_job_statements(config, module)
            role = self._role(
                self.logical_id("JobRole", module),
                "ecs-tasks.amazonaws.com",
                statements,
                {MODULE_TAG: module},
            )
            name = names.job_definition(self.named, module)
            self.add_job_definition(
                module,
                name,
                self.image(
                    names.module_image(config, module),
                    project=bool(config["aws"].get("project_image_for_modules")),
                ),
                spec["vcpu"],
                spec["memory_mib"],
                spec["arguments"],
                spec["mounts"],
                module_environment(config, module),
                spec["retries"],
                spec["timeout_seconds"],
                role,
            )
        mounts = names.publish_mounts(config)
        statements = self.efs_statements(mounts)
        publish = config["storage"].get("publish")
        if s3_location(publish):
            statements += self.s3_write_statements(publish, "Publish")
        role = self._role(
            self.logical_id("JobRole", names.PUBLISH),
            "ecs-tasks.amazonaws.com",
            statements,
            {MODULE_TAG: names.PUBLISH},
        )
        self.add_job_definition(
            names.PUBLISH,
            names.publish_job_definition(self.named),
            self.image(names.project_image(config), project=True),
            PUBLISH_VCPU,
            PUBLISH_MEMORY_MIB,
            [],
            mounts,
            {},
            PUBLISH_ATTEMPTS,
            PUBLISH_TIMEOUT_SECONDS,
            role,
        )

    # -- storage and logs ------------------------------------------------------------------

    def add_buckets(self) -> None:
        for bucket in buckets(self.config):
            self.add(
                self.logical_id("Bucket", bucket),
                "AWS::S3::Bucket",
                {
                    "BucketName": bucket,
                    "BucketEncryption": {
                        "ServerSideEncryptionConfiguration": [
                            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                        ]
                    },
                    "VersioningConfiguration": {"Status": "Enabled"},
                    "PublicAccessBlockConfiguration": {
                        "BlockPublicAcls": True,
                        "BlockPublicPolicy": True,
                        "IgnorePublicAcls": True,
                        "RestrictPublicBuckets": True,
                    },
                    "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                },
                DeletionPolicy="Retain",
                UpdateReplacePolicy="Retain",
                Condition="CreateBuckets",
            )

    def add_log_group(self) -> None:
        self.add(
            "JobLogGroup",
            "AWS::Logs::LogGroup",
            {"LogGroupName": self.log_group, "RetentionInDays": {"Ref": "LogRetentionDays"}},
            Condition="CreateLogGroup",
        )


def _used_access_points(config: dict) -> list[tuple[str, str]]:
    mounts = [m for spec in config["modules"].values() for m in spec["mounts"]]
    return _unique_mounts(mounts + names.publish_mounts(config))


def _check(config: dict) -> None:
    # Mounts of unknown file systems are refused when the configuration loads.
    if config["aws"].get("project_image_for_modules"):
        from confluence.modules import REGISTRY

        missing = [m for m in config["modules"] if m not in REGISTRY]
        if missing:
            raise TemplateError(
                "config key aws.project_image_for_modules: the project image has no reference "
                f"implementation of {', '.join(missing)}; give those modules their own image "
                "or turn the switch off"
            )


def render(config: dict, *, subnet_count: int = DEFAULT_SUBNET_COUNT) -> dict:
    """The CloudFormation template (a dict) of a validated configuration."""
    if not 1 <= subnet_count <= 16:
        raise TemplateError(f"--subnet-count {subnet_count}: give 1 to 16 subnets")
    _check(config)
    builder = _Builder(config, subnet_count)
    builder.add_parameters()
    images = [names.module_image(config, m) for m in config["modules"]]
    images.append(names.project_image(config))
    builder.add_service_roles(images)
    builder.add_file_systems(_used_access_points(config))
    builder.add_queues()
    builder.add_jobs()
    builder.add_buckets()
    builder.add_log_group()
    fragment = podaac_fragment(config, builder)
    builder.parameters.update(fragment.get("Parameters", {}))
    builder.resources.update(fragment.get("Resources", {}))
    builder.outputs.update(fragment.get("Outputs", {}))
    if len(builder.resources) > MAX_RESOURCES:
        raise TemplateError(
            f"{len(builder.resources)} resources, more than CloudFormation's {MAX_RESOURCES} "
            "per stack: fewer modules, file systems or mounted folders per template"
        )
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            "SWOT Confluence on AWS Batch (Fargate): queues, job definitions, EFS, roles, "
            "buckets and logs of one configuration. Rendered by `confluence infra template`; "
            "change the configuration and render again rather than editing this."
        ),
        "Metadata": {
            "Confluence": {
                "Prefix": config["aws"]["prefix"],
                "SubnetCount": subnet_count,
                "Modules": list(config["modules"]),
                "FileSystems": list(config["filesystems"]),
            }
        },
        "Parameters": builder.parameters,
        "Conditions": builder.conditions,
        "Resources": builder.resources,
        "Outputs": builder.outputs,
    }


# --- PO.DAAC credentials renewal (hook) ---------------------------------------------------
#
# The one place the template meets confluence.podaac. With aws.podaac.enabled it adds a
# Lambda function (handler confluence.podaac.lambda_handler, code from an S3 object given as
# parameters) that renews PO.DAAC's temporary S3 credentials into SSM under
# aws.podaac.ssm_prefix, its role, an EventBridge rule rate(50 minutes) created DISABLED
# (`confluence credentials enable` switches it on), and lets input-stage jobs read the
# stored credentials. Anything more the renewal needs belongs here.

PODAAC_HANDLER = "confluence.podaac.lambda_handler"
PODAAC_SCHEDULE = "rate(50 minutes)"
PODAAC_RUNTIME = "python3.11"


def _ssm_parameters(prefix: str, pattern: str) -> dict:
    return _arn("ssm", f"parameter{prefix.rstrip('/')}/{pattern}")


def podaac_job_statements(config: dict, module: str) -> list[dict]:
    """Input-stage jobs read the renewed S3 credentials (and nothing else of SSM)."""
    section = podaac.enabled_section(config)
    if section is None or config["modules"][module].get("stage") != "input":
        return []
    return [
        {
            "Sid": "PodaacCredentials",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParameters"],
            "Resource": _ssm_parameters(section["ssm_prefix"], "s3/*"),
        }
    ]


def podaac_fragment(config: dict, builder: _Builder) -> dict:
    """Parameters, resources and outputs of the credential renewal ({} when disabled)."""
    section = podaac.enabled_section(config)
    if section is None:
        return {}
    prefix = section["ssm_prefix"]
    rule = names.podaac_rule(builder.named)
    function_name = _sub(rule)
    log_group = f"/aws/lambda/{rule}"
    statements = [
        # It reads the Earthdata login and the previous credentials (to roll back) ...
        {
            "Sid": "ReadParameters",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParameters"],
            "Resource": _ssm_parameters(prefix, "*"),
        },
        # ... and writes, or on a failed renewal removes, only the credentials.
        {
            "Sid": "WriteCredentials",
            "Effect": "Allow",
            "Action": ["ssm:PutParameter", "ssm:DeleteParameter"],
            "Resource": _ssm_parameters(prefix, "s3/*"),
        },
        {
            "Sid": "FunctionLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": _arn("logs", f"log-group:{log_group}:log-stream:*"),
        },
    ]
    role = builder._role(
        "PodaacFunctionRole", "lambda.amazonaws.com", statements, {"confluence:role": "podaac"}
    )
    resources = {
        "PodaacLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": _sub(log_group),
                "RetentionInDays": {"Ref": "LogRetentionDays"},
            },
        },
        "PodaacFunction": {
            "Type": "AWS::Lambda::Function",
            "DependsOn": "PodaacLogGroup",
            "Properties": {
                "FunctionName": function_name,
                "Description": "Renews PO.DAAC's temporary S3 credentials into SSM",
                "Runtime": PODAAC_RUNTIME,
                "Handler": PODAAC_HANDLER,
                "Code": {
                    "S3Bucket": {"Ref": "PodaacCodeBucket"},
                    "S3Key": {"Ref": "PodaacCodeKey"},
                },
                "Role": {"Fn::GetAtt": [role, "Arn"]},
                # A renewal is a few HTTPS round trips through Earthdata Login.
                "Timeout": 120,
                "MemorySize": 256,
                "Environment": {
                    "Variables": {
                        podaac.ENV_SSM_PREFIX: prefix,
                        podaac.ENV_CREDENTIALS_ENDPOINT: section["credentials_endpoint"],
                    }
                },
            },
        },
        "PodaacSchedule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "Name": _sub(rule),
                "Description": "Renew PO.DAAC S3 credentials (they last an hour) during a run",
                "ScheduleExpression": PODAAC_SCHEDULE,
                # Switched on for a run: `confluence credentials enable`.
                "State": "DISABLED",
                "Targets": [{"Arn": {"Fn::GetAtt": ["PodaacFunction", "Arn"]}, "Id": "renew"}],
            },
        },
        "PodaacSchedulePermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "FunctionName": {"Ref": "PodaacFunction"},
                "Action": "lambda:InvokeFunction",
                "Principal": "events.amazonaws.com",
                "SourceArn": {"Fn::GetAtt": ["PodaacSchedule", "Arn"]},
            },
        },
    }
    return {
        "Parameters": {
            "PodaacCodeBucket": {
                "Type": "String",
                "MinLength": 3,
                "Description": "S3 bucket of the renewal function's deployment package (zip).",
            },
            "PodaacCodeKey": {
                "Type": "String",
                "MinLength": 1,
                "Description": "S3 key of the deployment package (the confluence package).",
            },
        },
        "Resources": resources,
        "Outputs": {
            "PodaacScheduleRule": {
                "Description": "EventBridge rule of the renewal schedule",
                "Value": {"Ref": "PodaacSchedule"},
            }
        },
    }


# --- YAML and the CLI ---------------------------------------------------------------------

#: CloudFormation takes a template body up to this size; larger ones go through S3.
MAX_BODY_BYTES = 51_200


class _Dumper(yaml.SafeDumper):
    # Shared dicts (the same Ref in many places) would become YAML aliases, which
    # CloudFormation rejects.
    def ignore_aliases(self, data) -> bool:
        return True


def to_yaml(template: dict) -> str:
    header = (
        "# Rendered by `confluence infra template` from the workflow configuration.\n"
        "# Do not edit: change the configuration and render again.\n"
    )
    body = yaml.dump(template, Dumper=_Dumper, sort_keys=False, width=100)
    return header + body


def cli(args) -> int:
    from confluence import config as config_module

    try:
        config = config_module.load(args.configfile)
        template = render(config, subnet_count=args.subnet_count)
        text = to_yaml(template)
    except (config_module.ConfigError, TemplateError) as err:
        print(f"confluence infra template: {err}", file=sys.stderr)
        return 2
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    upload = " --s3-bucket BUCKET" if len(text.encode()) > MAX_BODY_BYTES else ""
    print(
        f"wrote {path} ({len(text.encode())} bytes). Deploy it with:\n"
        f"  aws cloudformation deploy --template-file {path} --stack-name "
        f"{stack_name(config)} --capabilities CAPABILITY_IAM{upload} \\\n"
        "    --parameter-overrides SubnetIds=subnet-...,subnet-... SecurityGroupIds=sg-..."
        + (
            " PodaacCodeBucket=BUCKET PodaacCodeKey=podaac.zip (confluence infra podaac-package)"
            if "PodaacCodeKey" in template["Parameters"]
            else ""
        ),
        file=sys.stderr,
    )
    return 0
