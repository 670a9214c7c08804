"""``confluence infra template``, the project image and the emulator's stack.

The rendered template must pass cfn-lint, hold what the configuration says (job
definitions, queues, mounts) and give each job role no more than its own access points and
S3 prefix. The emulator deploys the same template as a CloudFormation stack; one emulator
here runs every module on the project image.
"""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import boto3
import pytest
import yaml
from batch_emulator import BatchEmulator, wait_for_job, write_config

from confluence import cli
from confluence import config as config_module
from confluence.batch import names
from confluence.emulator import cloudformation
from confluence.infra import entrypoint
from confluence.infra import template as infra

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "test-"
#: Every optional part on: Spot, PO.DAAC, ECR images, S3 publication and state, a prefix.
FULL = {
    "aws": {
        "prefix": PREFIX,
        "spot_queues": ["flpe"],
        "runnable_timeout_seconds": 1800,
        "podaac": {"enabled": True, "ssm_prefix": "/test/podaac"},
    },
    "image_registry": "123456789012.dkr.ecr.us-west-2.amazonaws.com/",
    "storage": {"publish": "s3://test-sos/results", "state": "s3://test-state/controller"},
}


@pytest.fixture(scope="module")
def default_config():
    return config_module.load()


@pytest.fixture(scope="module")
def full_config():
    return config_module.load(overrides=FULL)


@pytest.fixture(scope="module")
def full(full_config):
    return infra.render(full_config)


def of_type(template: dict, kind: str) -> dict[str, dict]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def resolve(value, prefix: str = PREFIX) -> str:
    """A name as the stack would have it (Fn::Sub of ${Prefix} with the default)."""
    if isinstance(value, dict):
        return value["Fn::Sub"].replace("${Prefix}", prefix)
    return value


def tag(properties: dict, key: str, field: str = "Tags"):
    tags = properties.get(field) or {}
    if isinstance(tags, dict):
        return tags.get(key)
    return next((t["Value"] for t in tags if t["Key"] == key), None)


def job_definitions(template: dict) -> dict[str, dict]:
    """Module (or publish) -> its job definition's properties."""
    found = of_type(template, "AWS::Batch::JobDefinition")
    return {tag(r["Properties"], infra.MODULE_TAG): r["Properties"] for r in found.values()}


def mounts_of(template: dict, properties: dict) -> set[tuple[str, str, str]]:
    """{(file system, folder, container path)} of a job definition, through its volumes,
    access points and file systems."""
    resources = template["Resources"]
    container = properties["ContainerProperties"]
    volumes = {v["Name"]: v["EfsVolumeConfiguration"] for v in container["Volumes"]}
    found = set()
    for point in container["MountPoints"]:
        efs = volumes[point["SourceVolume"]]
        assert efs["TransitEncryption"] == "ENABLED"
        assert efs["AuthorizationConfig"]["Iam"] == "ENABLED"
        assert "RootDirectory" not in efs
        access = resources[efs["AuthorizationConfig"]["AccessPointId"]["Ref"]]["Properties"]
        assert access["FileSystemId"] == efs["FileSystemId"]
        fs = resources[efs["FileSystemId"]["Ref"]]["Properties"]
        name = tag(fs, infra.FILESYSTEM_TAG, "FileSystemTags")
        folder = access["RootDirectory"]["Path"].strip("/")
        found.add((name, folder, point["ContainerPath"]))
    return found


def configured_mounts(mounts: list[dict]) -> set[tuple[str, str, str]]:
    return {(m["filesystem"], m.get("subpath", "").strip("/"), m["path"]) for m in mounts}


def statements(role: dict) -> list[dict]:
    return [
        s for p in role["Properties"].get("Policies", []) for s in p["PolicyDocument"]["Statement"]
    ]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# --- lint -----------------------------------------------------------------------------------


def test_rendered_templates_pass_cfn_lint(default_config, full_config, tmp_path):
    paths = []
    for name, config in (("default", default_config), ("full", full_config)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(infra.to_yaml(infra.render(config)))
    switched = config_module.load(overrides={"aws": {"project_image_for_modules": True}})
    paths.append(tmp_path / "project-image.yaml")
    paths[-1].write_text(infra.to_yaml(infra.render(switched, subnet_count=3)))
    result = subprocess.run(
        # cfn-lint's console script, with this interpreter (it has no __main__).
        [sys.executable, "-c", "import sys, cfnlint.runner; sys.exit(cfnlint.runner.main())"]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_writes_the_template(default_config, tmp_path, capsys):
    target = tmp_path / "confluence.yaml"
    assert cli.main(["infra", "template", "-o", str(target)]) == 0
    assert yaml.safe_load(target.read_text()) == infra.render(default_config)
    assert "aws cloudformation deploy" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"aws": {"spot_queues": ["nowhere"]}}))
    assert cli.main(["infra", "template", "--configfile", str(bad)]) == 2
    assert "aws.spot_queues: nowhere is no module's queue" in capsys.readouterr().err


# --- what the configuration says --------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "full"])
def test_every_module_has_its_job_definition(name, default_config, full_config):
    config = {"default": default_config, "full": full_config}[name]
    template = infra.render(config)
    definitions = job_definitions(template)
    assert set(definitions) == {*config["modules"], names.PUBLISH}
    for module, spec in config["modules"].items():
        properties = definitions[module]
        container = properties["ContainerProperties"]
        assert resolve(properties["JobDefinitionName"], config["aws"]["prefix"]) == (
            names.job_definition(config, module)
        )
        assert properties["PlatformCapabilities"] == ["FARGATE"]
        assert properties["PropagateTags"] is True
        requirements = {r["Type"]: r["Value"] for r in container["ResourceRequirements"]}
        assert float(requirements["VCPU"]) == float(spec["vcpu"])
        assert int(requirements["MEMORY"]) == spec["memory_mib"]
        assert properties["Timeout"] == {"AttemptDurationSeconds": spec["timeout_seconds"]}
        strategy = properties["RetryStrategy"]
        assert strategy["Attempts"] == spec["retries"]
        assert strategy["EvaluateOnExit"] == [
            {"OnStatusReason": "Host EC2*", "Action": "RETRY"},
            {"OnStatusReason": "Your Spot Task was interrupted*", "Action": "RETRY"},
            {"OnReason": "*", "Action": "EXIT"},
        ]
        assert mounts_of(template, properties) == configured_mounts(spec["mounts"])
        image = container["Image"]["Fn::If"]
        assert image[1] == names.image(config, spec["image"])
        assert image[2] == {"Fn::Sub": image[1].rsplit(":", 1)[0] + ":${ModuleImageTag}"}
        assert container["Command"] == spec["arguments"]
        options = container["LogConfiguration"]["Options"]
        assert options["awslogs-group"] == config["aws"]["log_group"]
        assert container["JobRoleArn"] == {"Fn::GetAtt": [f"JobRole{_camel(module)}", "Arn"]}
    publish = definitions[names.PUBLISH]
    assert resolve(publish["JobDefinitionName"], config["aws"]["prefix"]) == (
        names.publish_job_definition(config)
    )
    assert publish["ContainerProperties"]["Image"]["Fn::If"][1] == names.project_image(config)
    assert mounts_of(template, publish) == {
        (fs, "", f"/mnt/data/{fs}") for fs in config["filesystems"]
    }


def _camel(name: str) -> str:
    return "".join(w.capitalize() for w in name.split("_"))


def test_every_queue_exists_with_its_compute_environment(full_config, full):
    queues = {
        resolve(r["Properties"]["JobQueueName"]): r["Properties"]
        for r in of_type(full, "AWS::Batch::JobQueue").values()
    }
    assert set(queues) == set(names.queues(full_config))
    environments = of_type(full, "AWS::Batch::ComputeEnvironment")
    for name, queue in queues.items():
        [order] = queue["ComputeEnvironmentOrder"]
        environment = environments[order["ComputeEnvironment"]["Ref"]]["Properties"]
        assert resolve(environment["ComputeEnvironmentName"]) == f"{name}-ce"
        resources = environment["ComputeResources"]
        assert resources["Type"] == ("FARGATE_SPOT" if name == f"{PREFIX}flpe" else "FARGATE")
        assert resources["Subnets"] == {"Ref": "SubnetIds"}
        actions = queue["JobStateTimeLimitActions"]
        assert {a["Reason"] for a in actions} == set(infra.RUNNABLE_REASONS)
        assert all(
            (a["Action"], a["State"], a["MaxTimeSeconds"]) == ("CANCEL", "RUNNABLE", 1800)
            for a in actions
        )
    never = config_module.load(overrides={"aws": {"runnable_timeout_seconds": None}})
    for queue in of_type(infra.render(never), "AWS::Batch::JobQueue").values():
        assert "JobStateTimeLimitActions" not in queue["Properties"]


def test_file_systems_buckets_and_logs(full_config, full):
    file_systems = of_type(full, "AWS::EFS::FileSystem")
    by_name = {
        tag(r["Properties"], infra.FILESYSTEM_TAG, "FileSystemTags"): (k, r["Properties"])
        for k, r in file_systems.items()
    }
    assert list(by_name) == full_config["filesystems"]
    targets = of_type(full, "AWS::EFS::MountTarget").values()
    for name, (logical, properties) in by_name.items():
        assert properties["Encrypted"] is True and properties["ThroughputMode"] == "elastic"
        assert resolve(tag(properties, "Name", "FileSystemTags")) == f"{PREFIX}{name}"
        mine = [t for t in targets if t["Properties"]["FileSystemId"] == {"Ref": logical}]
        assert len(mine) == infra.DEFAULT_SUBNET_COUNT
    # One access point per mounted folder, none unused.
    points = {
        (
            tag(r["Properties"], infra.FILESYSTEM_TAG, "AccessPointTags"),
            r["Properties"]["RootDirectory"]["Path"].strip("/"),
        )
        for r in of_type(full, "AWS::EFS::AccessPoint").values()
    }
    mounted = {
        (m["filesystem"], m["subpath"].strip("/"))
        for spec in full_config["modules"].values()
        for m in spec["mounts"]
    } | {(fs, "") for fs in full_config["filesystems"]}
    assert points == mounted
    buckets = {r["Properties"]["BucketName"]: r for r in of_type(full, "AWS::S3::Bucket").values()}
    assert set(buckets) == {"test-sos", "test-state"}  # storage.inputs is a local folder
    for bucket in buckets.values():
        properties = bucket["Properties"]
        assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
        assert all(properties["PublicAccessBlockConfiguration"].values())
        assert properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert bucket["DeletionPolicy"] == "Retain"
    group = full["Resources"]["JobLogGroup"]
    assert group["Condition"] == "CreateLogGroup"
    assert all(b["Condition"] == "CreateBuckets" for b in buckets.values())
    # Batch's default log group exists in any account that has run a job: not created.
    assert full_config["aws"]["log_group"] == "/aws/batch/job"
    assert full["Parameters"]["CreateLogGroup"]["Default"] == "false"
    own_group = config_module.load(overrides={**FULL, "aws": {**FULL["aws"], "log_group": "/c"}})
    assert infra.render(own_group)["Parameters"]["CreateLogGroup"]["Default"] == "true"
    assert group["Properties"] == {
        "LogGroupName": full_config["aws"]["log_group"],
        "RetentionInDays": {"Ref": "LogRetentionDays"},
    }
    assert set(full["Parameters"]) >= {
        "SubnetIds",
        "SecurityGroupIds",
        "Prefix",
        "ModuleImageTag",
        "ProjectImageTag",
        "LogRetentionDays",
        "CreateLogGroup",
        "CreateBuckets",
    }


# --- least privilege ------------------------------------------------------------------------


def test_job_roles_grant_only_their_access_points_and_prefix(full_config, full):
    resources = full["Resources"]
    roles = {
        tag(r["Properties"], infra.MODULE_TAG): r
        for r in of_type(full, "AWS::IAM::Role").values()
        if tag(r["Properties"], infra.MODULE_TAG)
    }
    assert set(roles) == {*full_config["modules"], names.PUBLISH}
    mounts = {m: spec["mounts"] for m, spec in full_config["modules"].items()}
    mounts[names.PUBLISH] = names.publish_mounts(full_config)
    for module, role in roles.items():
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
        granted_points, s3 = set(), []
        for statement in statements(role):
            assert statement["Effect"] == "Allow"
            actions = as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), statement
            if all(a.startswith("elasticfilesystem:") for a in actions):
                assert set(actions) == set(infra.EFS_CLIENT_ACTIONS)
                condition = statement["Condition"]["StringEquals"]
                for point in as_list(condition["elasticfilesystem:AccessPointArn"]):
                    logical = point["Fn::GetAtt"][0]
                    properties = resources[logical]["Properties"]
                    # The access point belongs to the file system the statement names.
                    assert properties["FileSystemId"] == {
                        "Ref": statement["Resource"]["Fn::GetAtt"][0]
                    }
                    granted_points.add(
                        (
                            tag(properties, infra.FILESYSTEM_TAG, "AccessPointTags"),
                            properties["RootDirectory"]["Path"].strip("/"),
                        )
                    )
            elif all(a.startswith("s3:") for a in actions):
                s3.append(statement)
            elif all(a.startswith("ssm:") for a in actions):
                assert module == "input"  # the input stage reads the PO.DAAC credentials
                assert set(actions) == {"ssm:GetParameter", "ssm:GetParameters"}
                assert statement["Resource"]["Fn::Sub"].endswith(":parameter/test/podaac/s3/*")
            else:
                raise AssertionError(f"{module}: unexpected statement {statement}")
        wanted = {(m["filesystem"], m.get("subpath", "").strip("/")) for m in mounts[module]}
        assert granted_points == wanted, module
        if module != names.PUBLISH:
            assert s3 == [], f"{module} needs no S3"
            continue
        # Publication: list and write under storage.publish's prefix, delete nothing.
        listing = next(s for s in s3 if s["Action"] == "s3:ListBucket")
        assert listing["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::test-sos"}
        assert listing["Condition"] == {"StringLike": {"s3:prefix": ["results", "results/*"]}}
        objects = next(s for s in s3 if s["Action"] != "s3:ListBucket")
        assert objects["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::test-sos/results/*"}
        assert "s3:DeleteObject" not in objects["Action"]
        assert len(s3) == 2
    execution = statements(resources["TaskExecutionRole"])
    logs = next(s for s in execution if s["Sid"] == "JobLogs")
    assert logs["Resource"]["Fn::Sub"].endswith(
        f"log-group:{full_config['aws']['log_group']}:log-stream:*"
    )
    pulls = next(s for s in execution if s["Sid"] == "EcrPull")
    repositories = {r["Fn::Sub"].rsplit("/", 1)[-1] for r in pulls["Resource"]}
    assert repositories == {
        spec["image"].split(":")[0] for spec in full_config["modules"].values()
    } | {"confluence"}
    # Only the ECR login has no resource to scope to.
    assert [s["Sid"] for s in execution if s["Resource"] == "*"] == ["EcrLogin"]


def test_podaac_renewal_only_when_enabled(default_config, full_config, full):
    assert not of_type(infra.render(default_config), "AWS::Lambda::Function")
    assert "PodaacCodeBucket" not in infra.render(default_config)["Parameters"]
    [function] = of_type(full, "AWS::Lambda::Function").values()
    properties = function["Properties"]
    assert properties["Runtime"] == "python3.11"
    assert properties["Handler"] == "confluence.podaac.lambda_handler"
    assert properties["Code"] == {
        "S3Bucket": {"Ref": "PodaacCodeBucket"},
        "S3Key": {"Ref": "PodaacCodeKey"},
    }
    variables = properties["Environment"]["Variables"]
    assert variables == {
        "CONFLUENCE_SSM_PREFIX": "/test/podaac",
        "CONFLUENCE_CREDENTIALS_ENDPOINT": "https://archive.podaac.earthdata.nasa.gov/s3credentials",
    }
    [rule] = of_type(full, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(50 minutes)"
    assert rule["Properties"]["State"] == "DISABLED"
    assert resolve(rule["Properties"]["Name"]) == names.podaac_rule(full_config)
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["PodaacFunction", "Arn"]}
    [permission] = of_type(full, "AWS::Lambda::Permission").values()
    assert permission["Properties"]["Principal"] == "events.amazonaws.com"
    assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": ["PodaacSchedule", "Arn"]}
    role = full["Resources"][properties["Role"]["Fn::GetAtt"][0]]
    for statement in statements(role):
        resource = resolve(statement["Resource"])
        if statement["Sid"] == "FunctionLogs":
            assert resource.endswith(":log-group:/aws/lambda/test-podaac-credentials:log-stream:*")
        else:
            assert ":parameter/test/podaac/" in resource
            assert all(a.startswith("ssm:") for a in statement["Action"])
    writes = next(s for s in statements(role) if "ssm:PutParameter" in s["Action"])
    assert writes["Resource"]["Fn::Sub"].endswith(":parameter/test/podaac/s3/*")


def test_podaac_template_deploys_on_moto(full_config):
    """The Lambda function, its schedule and permission deploy (moto, in process)."""
    from moto import mock_aws

    body = infra.to_yaml(infra.render(full_config))
    cloudformation.install()
    try:
        with mock_aws():
            region = "us-west-2"
            ec2 = boto3.client("ec2", region_name=region)
            vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
            subnets = [
                ec2.create_subnet(
                    VpcId=vpc, CidrBlock=f"10.0.{16 * i}.0/20", AvailabilityZone=f"{region}{z}"
                )["Subnet"]["SubnetId"]
                for i, z in enumerate("ab")
            ]
            group = ec2.create_security_group(GroupName="g", Description="g", VpcId=vpc)
            s3 = boto3.client("s3", region_name=region)
            s3.create_bucket(
                Bucket="code", CreateBucketConfiguration={"LocationConstraint": region}
            )
            package = io.BytesIO()
            with zipfile.ZipFile(package, "w") as archive:
                archive.writestr("confluence/__init__.py", "")
            s3.put_object(Bucket="code", Key="podaac.zip", Body=package.getvalue())
            stacks = boto3.client("cloudformation", region_name=region)
            stacks.create_stack(
                StackName="test-confluence",
                TemplateBody=body,
                Capabilities=["CAPABILITY_IAM"],
                Parameters=[
                    {"ParameterKey": "SubnetIds", "ParameterValue": ",".join(subnets)},
                    {"ParameterKey": "SecurityGroupIds", "ParameterValue": group["GroupId"]},
                    {"ParameterKey": "PodaacCodeBucket", "ParameterValue": "code"},
                    {"ParameterKey": "PodaacCodeKey", "ParameterValue": "podaac.zip"},
                ],
            )
            status = stacks.describe_stacks(StackName="test-confluence")["Stacks"][0]
            assert status["StackStatus"] == "CREATE_COMPLETE"
            function = boto3.client("lambda", region_name=region).get_function(
                FunctionName="test-podaac-credentials"
            )["Configuration"]
            assert function["Handler"] == "confluence.podaac.lambda_handler"
            assert function["Environment"]["Variables"]["CONFLUENCE_SSM_PREFIX"] == "/test/podaac"
            rule = boto3.client("events", region_name=region).describe_rule(
                Name=names.podaac_rule(full_config)
            )
            assert (rule["State"], rule["ScheduleExpression"]) == ("DISABLED", "rate(50 minutes)")
            queue = boto3.client("batch", region_name=region).describe_job_queues(
                jobQueues=[names.queue(full_config, "geobam")]
            )["jobQueues"][0]
            assert queue["jobStateTimeLimitActions"][0]["maxTimeSeconds"] == 1800
    finally:
        cloudformation.uninstall()


def test_configuration_errors_name_the_key(default_config):
    with pytest.raises(infra.TemplateError, match="aws.spot_queues: nowhere"):
        infra.render(config_module.load(overrides={"aws": {"spot_queues": ["nowhere"]}}))
    mounts = [{"filesystem": "input", "path": "/mnt/data"}]
    strange = {"modules": {"strange": {"stage": "flpe", "mounts": mounts}}}
    assert infra.render(config_module.load(overrides=strange))  # on its own image: fine
    switched = config_module.merge(strange, {"aws": {"project_image_for_modules": True}})
    with pytest.raises(infra.TemplateError, match="no reference implementation of strange"):
        infra.render(config_module.load(overrides=switched))
    with pytest.raises(infra.TemplateError, match="--subnet-count 0"):
        infra.render(default_config, subnet_count=0)


# --- the project image ----------------------------------------------------------------------


def test_entry_points_the_image_and_job_definitions_name_exist(full_config, full):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    [line] = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    argv = json.loads(line)
    assert argv[:2] == ["python", "-m"]
    assert callable(importlib.import_module(argv[2]).main)
    # The console script.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, function = project["scripts"]["confluence"].split(":")
    assert callable(getattr(importlib.import_module(module), function))
    # Subcommands the jobs run: publication, staging, modules.
    subparsers = next(
        a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
    )
    for command in ("finish-chunk", "sync", "module", "infra"):
        assert command in subparsers.choices
    controller = (ROOT / "src/confluence/batch/controller.py").read_text()
    assert '"finish-chunk"' in controller
    # Every module a project-image job definition names has a reference implementation.
    from confluence.modules import REGISTRY

    switched = config_module.load(overrides={"aws": {"project_image_for_modules": True}})
    for module, properties in job_definitions(infra.render(switched)).items():
        environment = properties["ContainerProperties"].get("Environment", [])
        names_ = {e["Value"] for e in environment if e["Name"] == entrypoint.ENV_MODULE}
        assert names_ == ({module} if module != names.PUBLISH else set())
        for name in names_:
            target_module, target = REGISTRY[name].split(":")
            assert callable(getattr(importlib.import_module(target_module), target))
    # The Lambda handler.
    [function] = of_type(full, "AWS::Lambda::Function").values()
    module, _, handler = function["Properties"]["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), handler))


def test_entrypoint_turns_the_job_command_into_the_module():
    assert entrypoint.command(["-i", "0", "reaches.json"], {"CONFLUENCE_MODULE": "momma"}) == [
        "module",
        "momma",
        "-i",
        "0",
        "reaches.json",
    ]
    assert entrypoint.command(["finish-chunk", "spec.json"], {}) == ["finish-chunk", "spec.json"]
    by_hand = ["module", "sad", "reaches.json"]
    assert entrypoint.command(by_hand, {"CONFLUENCE_MODULE": "momma"}) == by_hand


# --- the emulator's stack -------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_image_emulator(tmp_path_factory):
    base = tmp_path_factory.mktemp("infra")
    path = write_config(
        base, overrides={"aws": {"prefix": PREFIX, "project_image_for_modules": True}}
    )
    config = config_module.load([str(path)])
    with BatchEmulator([path], efs=base / "efs") as emulator:
        yield {"emulator": emulator, "config": config, "efs": base / "efs"}


def test_the_emulator_account_is_the_stack(project_image_emulator):
    emulator, config = project_image_emulator["emulator"], project_image_emulator["config"]
    stacks = emulator.client("cloudformation")
    [stack] = stacks.describe_stacks(StackName=infra.stack_name(config))["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in stacks.list_stack_resources(StackName=stack["StackName"])["StackResourceSummaries"]
    }
    batch = emulator.client("batch")
    queues = batch.describe_job_queues(jobQueues=names.queues(config))["jobQueues"]
    assert {q["jobQueueArn"] for q in queues} <= set(physical.values())
    assert len(queues) == len(names.queues(config))
    for module, spec in config["modules"].items():
        [definition] = batch.describe_job_definitions(
            jobDefinitionName=names.job_definition(config, module), status="ACTIVE"
        )["jobDefinitions"]
        assert definition["jobDefinitionArn"] in physical.values()
        # moto's CloudFormation drops these; the emulator puts them back from the template.
        assert definition["timeout"] == {"attemptDurationSeconds": spec["timeout_seconds"]}
        assert definition["platformCapabilities"] == ["FARGATE"]
        assert definition["propagateTags"] is True
        container = definition["containerProperties"]
        assert container["image"] == names.project_image(config)
        assert {"name": "CONFLUENCE_MODULE", "value": module} in container["environment"]
    assert queues[0]["jobStateTimeLimitActions"][0]["action"] == "CANCEL"


def test_a_module_runs_on_the_project_image(project_image_emulator):
    """The controller's command (``-i 0 <work list>``) on the project image runs the module
    that CONFLUENCE_MODULE names, reading through its access point mounts."""
    emulator, config = project_image_emulator["emulator"], project_image_emulator["config"]
    efs = project_image_emulator["efs"]
    worklist = [{"reach_id": 74100100011, "swot": "missing_SWOT.nc", "sos": "x.nc"}]
    (efs / "input" / "infra").mkdir(parents=True, exist_ok=True)
    (efs / "input" / "infra" / "reaches.json").write_text(json.dumps(worklist))
    batch = emulator.client("batch")
    job_id = batch.submit_job(
        jobName="project-image",
        jobQueue=names.queue(config, "prediagnostics"),
        jobDefinition=names.job_definition(config, "prediagnostics"),
        containerOverrides={"command": ["-i", "0", "infra/reaches.json"]},
    )["jobId"]
    job = wait_for_job(batch, job_id, timeout=90)
    events = emulator.client("logs").get_log_events(
        logGroupName=config["aws"]["log_group"], logStreamName=job["container"]["logStreamName"]
    )["events"]
    messages = "\n".join(e["message"] for e in events)
    # The module ran and says the reach's SWOT file is missing.
    assert job["status"] == "FAILED", messages
    assert "74100100011" in messages and "missing_SWOT.nc" in messages
    assert "prediagnostics" in messages


def test_access_point_mounts_follow_aws_rules():
    """A volume through an access point must not also name a rootDirectory."""
    from confluence.emulator.batch import Runner

    class Point:
        file_system_id, root_directory = "fs-1", {"Path": "/geobam"}

    class Backend:
        access_points = {"fsap-1": Point()}

    efs = {"fileSystemId": "fs-1", "transitEncryption": "ENABLED"}
    with_point = {**efs, "authorizationConfig": {"accessPointId": "fsap-1", "iam": "ENABLED"}}
    assert Runner._volume_folder(Backend, "v", with_point) == "geobam"
    assert Runner._volume_folder(Backend, "v", {**efs, "rootDirectory": "/sad"}) == "sad"
    with pytest.raises(ValueError, match="rootDirectory must be /"):
        Runner._volume_folder(Backend, "v", {**with_point, "rootDirectory": "/x"})
    with pytest.raises(ValueError, match="belongs to fs-1"):
        Runner._volume_folder(Backend, "v", {**with_point, "fileSystemId": "fs-2"})
    with pytest.raises(ValueError, match="does not exist"):
        other = {**with_point, "authorizationConfig": {"accessPointId": "fsap-9"}}
        Runner._volume_folder(Backend, "v", other)
