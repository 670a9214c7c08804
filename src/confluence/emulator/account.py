"""The emulated AWS account of a configuration: network, roles, file systems, Batch resources.

:func:`prepare_account` creates, through the AWS API of an emulator endpoint, everything a
Batch run of the configuration needs: a VPC, subnet and security group; the Batch service,
task execution and job roles; one EFS file system per ``filesystems`` entry (creation token
and tag Name = the file system name); one Fargate compute environment and one job queue per
queue the modules use; one job definition per module and the project's publish job
definition; the S3 buckets of ``storage`` that are s3:// URLs; the CloudWatch log group.

It is idempotent: what exists is reused (a job definition gets a new revision only when its
specification changed), so it can run again against a live emulator. It only ever talks to
the endpoint it is given, with fake credentials, so it cannot touch a real account.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from confluence.batch import names

NAME = "confluence"
#: Retry Spot reclaims (EC2 and Fargate wordings), exit on anything else (an application
#: error would only fail again). AWS evaluates the conditions in order.
EVALUATE_ON_EXIT = [
    {"onStatusReason": "Host EC2*", "action": "RETRY"},
    {"onStatusReason": "Your Spot Task was interrupted*", "action": "RETRY"},
    {"onReason": "*", "action": "EXIT"},
]
PUBLISH_VCPU, PUBLISH_MEMORY_MIB = 1, 2048
#: Publication copies a chunk's files to S3; it is idempotent, so Spot reclaims may retry it.
PUBLISH_ATTEMPTS, PUBLISH_TIMEOUT_SECONDS = 3, 3600
COMPUTE_MAX_VCPUS = 1000
SPEC_TAG = "confluence:spec"
_ARN_PREFIX = "arn:"


def _is_reference(name: str) -> bool:
    """A queue or job definition given as an ARN or name:revision exists already."""
    return name.startswith(_ARN_PREFIX) or ":" in name


def compute_environment_name(queue: str) -> str:
    """The compute environment behind a queue (names need 3+ characters ending in a letter
    or digit)."""
    return f"{queue}-ce"


def _vcpu(value) -> str:
    return f"{float(value):g}"


def _tags_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def efs_volumes(mounts: list[dict], file_systems: dict[str, str]) -> tuple[list, list]:
    """Batch ``volumes`` and ``mountPoints`` for confluence mounts
    ({filesystem, subpath, path}); ``file_systems`` maps names to EFS IDs."""
    volumes, points, seen = [], [], {}
    for mount in mounts:
        filesystem, subpath = mount["filesystem"], mount.get("subpath", "")
        key = (filesystem, subpath)
        if key not in seen:
            # One volume per (file system, folder): the folder is the volume's root.
            name = (
                filesystem
                if filesystem not in {k[0] for k in seen}
                else f"{filesystem}-{len(seen)}"
            )
            seen[key] = name
            volumes.append(
                {
                    "name": name,
                    "efsVolumeConfiguration": {
                        "fileSystemId": file_systems[filesystem],
                        "rootDirectory": "/" + subpath.strip("/"),
                        "transitEncryption": "ENABLED",
                    },
                }
            )
        points.append(
            {"sourceVolume": seen[key], "containerPath": mount["path"], "readOnly": False}
        )
    return volumes, points


def _container_properties(
    config: dict, image: str, vcpu, memory_mib: int, command: list[str], mounts, ids: dict
) -> dict:
    volumes, points = efs_volumes(mounts, ids["file_systems"])
    region = config["aws"]["region"]
    return {
        "image": image,
        "command": list(command),
        "resourceRequirements": [
            {"type": "VCPU", "value": _vcpu(vcpu)},
            {"type": "MEMORY", "value": str(int(memory_mib))},
        ],
        "executionRoleArn": ids["roles"]["execution"],
        "jobRoleArn": ids["roles"]["job"],
        "volumes": volumes,
        "mountPoints": points,
        "environment": [],
        "networkConfiguration": {"assignPublicIp": "DISABLED"},
        "fargatePlatformConfiguration": {"platformVersion": "LATEST"},
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": config["aws"]["log_group"], "awslogs-region": region},
        },
    }


def module_job_definition(config: dict, module: str, ids: dict) -> dict:
    """RegisterJobDefinition arguments of one module (``ids``: file_systems, roles)."""
    spec = config["modules"][module]
    return {
        "jobDefinitionName": names.job_definition(config, module),
        "type": "container",
        "platformCapabilities": ["FARGATE"],
        "containerProperties": _container_properties(
            config,
            names.image(config, spec["image"]),
            spec["vcpu"],
            spec["memory_mib"],
            spec["arguments"],
            spec["mounts"],
            ids,
        ),
        "retryStrategy": {"attempts": int(spec["retries"]), "evaluateOnExit": EVALUATE_ON_EXIT},
        "timeout": {"attemptDurationSeconds": int(spec["timeout_seconds"])},
        "propagateTags": True,
        "tags": {"confluence:module": module},
    }


def publish_job_definition(config: dict, ids: dict) -> dict:
    """RegisterJobDefinition arguments of the project image's publish job: every file system
    at /mnt/data/<name>."""
    mounts = [
        {"filesystem": fs, "subpath": "", "path": f"{names.MOUNT_ROOT}/{fs}"}
        for fs in config["filesystems"]
    ]
    return {
        "jobDefinitionName": names.publish_job_definition(config),
        "type": "container",
        "platformCapabilities": ["FARGATE"],
        "containerProperties": _container_properties(
            config,
            names.project_image(config),
            PUBLISH_VCPU,
            PUBLISH_MEMORY_MIB,
            [],
            mounts,
            ids,
        ),
        "retryStrategy": {"attempts": PUBLISH_ATTEMPTS, "evaluateOnExit": EVALUATE_ON_EXIT},
        "timeout": {"attemptDurationSeconds": PUBLISH_TIMEOUT_SECONDS},
        "propagateTags": True,
        "tags": {"confluence:module": names.PUBLISH},
    }


def _spec_digest(arguments: dict) -> str:
    spec = {k: v for k, v in arguments.items() if k != "tags"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def buckets(config: dict) -> list[str]:
    """Buckets named by storage.inputs and storage.publish when they are s3:// URLs."""
    found = []
    for url in (config["storage"].get("inputs"), config["storage"].get("publish")):
        if url and url.startswith("s3://"):
            bucket = urlsplit(url).netloc
            if bucket and bucket not in found:
                found.append(bucket)
    return found


class _Account:
    def __init__(self, config: dict, endpoint_url: str) -> None:
        self.config = config
        self.prefix = config["aws"]["prefix"]
        self.region = config["aws"]["region"]
        session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            aws_session_token="testing",
            region_name=self.region,
        )
        retries = Config(retries={"mode": "standard", "max_attempts": 5})
        self.client = lambda service: session.client(
            service, endpoint_url=endpoint_url, config=retries
        )

    def tag(self) -> list[dict]:
        return [{"Key": "Name", "Value": f"{self.prefix}{NAME}"}]

    def network(self) -> dict:
        ec2 = self.client("ec2")
        name = f"{self.prefix}{NAME}"
        found = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [name]}])["Vpcs"]
        if found:
            vpc = found[0]["VpcId"]
        else:
            vpc = ec2.create_vpc(
                CidrBlock="10.0.0.0/16",
                TagSpecifications=[{"ResourceType": "vpc", "Tags": self.tag()}],
            )["Vpc"]["VpcId"]
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
        if subnets:
            subnet = subnets[0]["SubnetId"]
        else:
            subnet = ec2.create_subnet(
                VpcId=vpc,
                CidrBlock="10.0.0.0/20",
                TagSpecifications=[{"ResourceType": "subnet", "Tags": self.tag()}],
            )["Subnet"]["SubnetId"]
        group_name = f"{name}-batch"
        groups = ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "group-name", "Values": [group_name]},
            ]
        )["SecurityGroups"]
        if groups:
            group = groups[0]["GroupId"]
        else:
            group = ec2.create_security_group(
                GroupName=group_name,
                Description="Confluence Batch jobs (EFS NFS inside the group, HTTPS out)",
                VpcId=vpc,
            )["GroupId"]
        return {"vpc": vpc, "subnets": [subnet], "security_groups": [group]}

    def roles(self) -> dict:
        iam = self.client("iam")
        s3 = [f"arn:aws:s3:::{b}" for b in buckets(self.config)]
        wanted = {
            "service": (
                "batch.amazonaws.com",
                "arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole",
                None,
            ),
            "execution": (
                "ecs-tasks.amazonaws.com",
                "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy",
                None,
            ),
            # The jobs themselves: the run's buckets only.
            "job": (
                "ecs-tasks.amazonaws.com",
                None,
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket"],
                            "Resource": [r for b in s3 for r in (b, b + "/*")] or ["*"],
                        }
                    ],
                },
            ),
        }
        arns = {}
        for kind, (principal, managed, inline) in wanted.items():
            name = f"{self.prefix}{NAME}-batch-{kind}"
            try:
                arns[kind] = iam.get_role(RoleName=name)["Role"]["Arn"]
                continue
            except ClientError as err:
                if err.response["Error"]["Code"] != "NoSuchEntity":
                    raise
            trust = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": principal},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
            arns[kind] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))[
                "Role"
            ]["Arn"]
            if managed:
                try:
                    iam.attach_role_policy(RoleName=name, PolicyArn=managed)
                except ClientError as err:
                    # moto knows AWS-managed policies only with MOTO_IAM_LOAD_MANAGED_POLICIES
                    # (slow to load); nothing in the emulator checks permissions anyway.
                    if err.response["Error"]["Code"] != "NoSuchEntity":
                        raise
            if inline:
                iam.put_role_policy(
                    RoleName=name, PolicyName=f"{name}-access", PolicyDocument=json.dumps(inline)
                )
        return arns

    def file_systems(self, network: dict) -> dict[str, str]:
        efs = self.client("efs")
        ids = {}
        for name in self.config["filesystems"]:
            found = efs.describe_file_systems(CreationToken=name)["FileSystems"]
            if found:
                ids[name] = found[0]["FileSystemId"]
            else:
                ids[name] = efs.create_file_system(
                    CreationToken=name,
                    PerformanceMode="generalPurpose",
                    # Bursting throughput collapses under many parallel jobs.
                    ThroughputMode="elastic",
                    Encrypted=True,
                    Tags=[{"Key": "Name", "Value": name}],
                )["FileSystemId"]
            targets = efs.describe_mount_targets(FileSystemId=ids[name])["MountTargets"]
            if not targets:
                efs.create_mount_target(
                    FileSystemId=ids[name],
                    SubnetId=network["subnets"][0],
                    SecurityGroups=network["security_groups"],
                )
        return ids

    def queues(self, network: dict, roles: dict) -> tuple[dict, dict]:
        batch = self.client("batch")
        environments, queues = {}, {}
        for queue in names.queues(self.config):
            if queue.startswith(_ARN_PREFIX):
                continue
            environment = compute_environment_name(queue)
            found = batch.describe_compute_environments(computeEnvironments=[environment])[
                "computeEnvironments"
            ]
            if found:
                environments[queue] = found[0]["computeEnvironmentArn"]
            else:
                environments[queue] = batch.create_compute_environment(
                    computeEnvironmentName=environment,
                    type="MANAGED",
                    state="ENABLED",
                    computeResources={
                        "type": "FARGATE",
                        "maxvCpus": COMPUTE_MAX_VCPUS,
                        "subnets": network["subnets"],
                        "securityGroupIds": network["security_groups"],
                    },
                    serviceRole=roles["service"],
                )["computeEnvironmentArn"]
            found = batch.describe_job_queues(jobQueues=[queue])["jobQueues"]
            if found:
                queues[queue] = found[0]["jobQueueArn"]
            else:
                queues[queue] = batch.create_job_queue(
                    jobQueueName=queue,
                    state="ENABLED",
                    priority=1,
                    computeEnvironmentOrder=[
                        {"order": 1, "computeEnvironment": environments[queue]}
                    ],
                )["jobQueueArn"]
        return environments, queues

    def job_definitions(self, ids: dict) -> dict[str, str]:
        batch = self.client("batch")
        wanted = {
            module: module_job_definition(self.config, module, ids)
            for module in self.config["modules"]
            if not _is_reference(names.job_definition(self.config, module))
        }
        wanted[names.PUBLISH] = publish_job_definition(self.config, ids)
        arns = {}
        for key, arguments in wanted.items():
            digest = _spec_digest(arguments)
            name = arguments["jobDefinitionName"]
            active = batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")[
                "jobDefinitions"
            ]
            latest = max(active, key=lambda d: d["revision"], default=None)
            if latest is not None and (latest.get("tags") or {}).get(SPEC_TAG) == digest:
                arns[key] = latest["jobDefinitionArn"]
                continue
            arguments = {**arguments, "tags": {**arguments["tags"], SPEC_TAG: digest}}
            arns[key] = batch.register_job_definition(**arguments)["jobDefinitionArn"]
        return arns

    def buckets(self) -> list[str]:
        s3 = self.client("s3")
        made = buckets(self.config)
        for bucket in made:
            try:
                s3.head_bucket(Bucket=bucket)
                continue
            except ClientError as err:
                if err.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                    raise
            if self.region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(
                    Bucket=bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.region},
                )
        return made

    def log_group(self) -> str:
        logs = self.client("logs")
        name = self.config["aws"]["log_group"]
        found = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        if not any(g["logGroupName"] == name for g in found):
            logs.create_log_group(logGroupName=name)
        return name


def prepare_account(config: dict, endpoint_url: str) -> dict:
    """Create (or find) the configuration's AWS resources on the emulator at ``endpoint_url``.

    ``config`` is a validated configuration (confluence.config.load). Returns what exists:
    ``{"region", "vpc", "subnets", "security_groups", "roles": {service, execution, job},
    "file_systems": {name: id}, "compute_environments": {queue: arn},
    "job_queues": {queue: arn}, "job_definitions": {module or "publish": arn},
    "buckets": [...], "log_group"}``.
    """
    account = _Account(config, endpoint_url)
    network = account.network()
    roles = account.roles()
    file_systems = account.file_systems(network)
    environments, queues = account.queues(network, roles)
    definitions = account.job_definitions({"file_systems": file_systems, "roles": roles})
    return {
        "region": account.region,
        **network,
        "roles": roles,
        "file_systems": file_systems,
        "compute_environments": environments,
        "job_queues": queues,
        "job_definitions": definitions,
        "buckets": account.buckets(),
        "log_group": account.log_group(),
    }
