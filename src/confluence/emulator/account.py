"""The emulated AWS account of a configuration: the network, then the infrastructure template.

:func:`prepare_account` creates, through the AWS API of an emulator endpoint, only what the
infrastructure template takes as parameters: a VPC, one subnet per Availability Zone the
template expects and a security group (tag Name ``<prefix>confluence``). Everything else
comes from deploying the rendered template (confluence.infra.template) as the stack
:func:`~confluence.infra.template.stack_name`: roles, EFS file systems with their mount
targets and access points, compute environments, queues, job definitions, buckets and the
log group are the stack's resources, as they would be on AWS. moto's CloudFormation leaves
out a few properties (job definition timeouts among them); confluence.emulator.cloudformation
puts them back in the emulator's process.

It is idempotent: the network is found again by its tags, and a stack with the same template
and parameters is left alone. A stack with another template is an error (moto cannot update
Batch resources in place; restart the emulator). It only ever talks to the endpoint it is
given, with fake credentials, so it cannot touch a real account.
"""

from __future__ import annotations

import ast
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from confluence.infra import template as infra
from confluence.infra.template import buckets

NAME = "confluence"
SUBNET_COUNT = infra.DEFAULT_SUBNET_COUNT
STACK_TIMEOUT_SECONDS = 120
_DONE = ("CREATE_COMPLETE", "UPDATE_COMPLETE")


def _parameter_value(value: str) -> str:
    """A stack parameter as given; moto describes a list parameter as a Python list."""
    if value.startswith("["):
        try:
            return ",".join(ast.literal_eval(value))
        except (ValueError, SyntaxError, TypeError):
            pass
    return value


def _tag(properties: dict, key: str, field: str = "Tags"):
    """A tag's value in a template resource (Tags as a map or as a Key/Value list)."""
    tags = properties.get(field) or {}
    if isinstance(tags, dict):
        return tags.get(key)
    return next((t["Value"] for t in tags if t["Key"] == key), None)


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

    def network(self, subnet_count: int = SUBNET_COUNT) -> dict:
        """The template's parameters: a VPC, one subnet per zone, a security group."""
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
        by_zone = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
        zones = sorted(
            z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]
        )[:subnet_count]
        for index, zone in enumerate(zones):
            # EFS allows one mount target per zone, so every subnet gets its own zone.
            if zone not in by_zone:
                by_zone[zone] = ec2.create_subnet(
                    VpcId=vpc,
                    CidrBlock=f"10.0.{16 * index}.0/20",
                    AvailabilityZone=zone,
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
        return {
            "vpc": vpc,
            "subnets": [by_zone[z] for z in zones],
            "security_groups": [group],
        }

    def deploy(self, body: str, parameters: dict[str, str]) -> dict:
        """Create the stack (or find it unchanged); returns its description."""
        cloudformation = self.client("cloudformation")
        name = infra.stack_name(self.config)
        wanted = [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]
        try:
            stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        except ClientError as err:
            if "does not exist" not in str(err):
                raise
            stack = None
        if stack is not None and stack["StackStatus"] in _DONE:
            deployed = cloudformation.get_template(StackName=name)["TemplateBody"]
            given = {
                p["ParameterKey"]: _parameter_value(p["ParameterValue"])
                for p in stack.get("Parameters", [])
            }
            if deployed == body and all(given.get(k) == v for k, v in parameters.items()):
                return stack
            raise RuntimeError(
                f"the emulator's stack {name} was deployed from another template or "
                "parameters; moto cannot update its Batch resources in place: restart the "
                "emulator with the new configuration"
            )
        if stack is not None:
            raise RuntimeError(
                f"the emulator's stack {name} is {stack['StackStatus']}: "
                f"{stack.get('StackStatusReason', '')}; restart the emulator"
            )
        try:
            cloudformation.create_stack(
                StackName=name,
                TemplateBody=body,
                Parameters=wanted,
                Capabilities=["CAPABILITY_IAM"],
                Tags=[{"Key": "confluence:stack", "Value": name}],
            )
        except ClientError as err:
            raise RuntimeError(f"the emulator could not deploy the template: {err}") from err
        deadline = time.monotonic() + STACK_TIMEOUT_SECONDS
        while True:
            stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
            if stack["StackStatus"] in _DONE:
                return stack
            if not stack["StackStatus"].endswith("_IN_PROGRESS"):
                raise RuntimeError(
                    f"stack {name}: {stack['StackStatus']} {stack.get('StackStatusReason', '')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"stack {name} still {stack['StackStatus']}")
            time.sleep(0.2)

    def resources(self, stack: dict, template: dict) -> dict:
        """What the stack made, keyed the way the configuration names it (read back from
        the template's tags and references)."""
        cloudformation = self.client("cloudformation")
        physical = {}
        paginator = cloudformation.get_paginator("list_stack_resources")
        for page in paginator.paginate(StackName=stack["StackName"]):
            for summary in page["StackResourceSummaries"]:
                physical[summary["LogicalResourceId"]] = summary.get("PhysicalResourceId", "")
        iam = self.client("iam")
        found: dict = {
            "roles": {"jobs": {}},
            "file_systems": {},
            "access_points": {},
            "compute_environments": {},
            "job_queues": {},
            "job_definitions": {},
        }
        for logical, resource in template["Resources"].items():
            kind, properties = resource["Type"], resource["Properties"]
            value = physical.get(logical)
            if value is None:
                continue  # a resource whose condition was false
            if kind == "AWS::IAM::Role":
                arn = iam.get_role(RoleName=value)["Role"]["Arn"]
                module = _tag(properties, infra.MODULE_TAG)
                if module:
                    found["roles"]["jobs"][module] = arn
                elif logical == "BatchServiceRole":
                    found["roles"]["service"] = arn
                elif logical == "TaskExecutionRole":
                    found["roles"]["execution"] = arn
            elif kind == "AWS::EFS::FileSystem":
                name = _tag(properties, infra.FILESYSTEM_TAG, "FileSystemTags")
                found["file_systems"][name] = value
            elif kind == "AWS::EFS::AccessPoint":
                name = _tag(properties, infra.FILESYSTEM_TAG, "AccessPointTags")
                folder = properties["RootDirectory"]["Path"].strip("/")
                found["access_points"][f"{name}/{folder}".rstrip("/")] = value
            elif kind == "AWS::Batch::JobQueue":
                queue = value.rsplit("/", 1)[-1]
                found["job_queues"][queue] = value
                environment = properties["ComputeEnvironmentOrder"][0]["ComputeEnvironment"]
                found["compute_environments"][queue] = physical[environment["Ref"]]
            elif kind == "AWS::Batch::JobDefinition":
                found["job_definitions"][_tag(properties, infra.MODULE_TAG)] = value
        return found


def prepare_account(config: dict, endpoint_url: str) -> dict:
    """Create (or find) the configuration's AWS resources on the emulator at ``endpoint_url``.

    ``config`` is a validated configuration (confluence.config.load). Returns what exists:
    ``{"region", "vpc", "subnets", "security_groups", "stack", "roles": {service,
    execution, jobs: {module or "publish": arn}}, "file_systems": {name: id},
    "access_points": {"name/folder": id}, "compute_environments": {queue: arn},
    "job_queues": {queue: arn}, "job_definitions": {module or "publish": arn},
    "buckets": [...], "log_group"}`` (queue names with aws.prefix).
    """
    account = _Account(config, endpoint_url)
    network = account.network(SUBNET_COUNT)
    template = infra.render(config, subnet_count=len(network["subnets"]))
    stack = account.deploy(
        infra.to_yaml(template),
        {
            "SubnetIds": ",".join(network["subnets"]),
            "SecurityGroupIds": ",".join(network["security_groups"]),
        },
    )
    return {
        "region": account.region,
        **network,
        "stack": stack["StackId"],
        **account.resources(stack, template),
        "buckets": buckets(config),
        "log_group": config["aws"]["log_group"],
    }
