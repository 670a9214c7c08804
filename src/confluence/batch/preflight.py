"""``confluence preflight``: check a live account against the configuration before a run.

A run that meets a disabled queue, a job definition with last month's memory or a missing
bucket fails late and costs money first. This checks, in a few read-only calls: every queue
ENABLED and VALID with ENABLED, VALID compute environments; every module's job definition
ACTIVE with the configured image, vCPU, memory, timeout, retries and mounts; the publish job
definition; the roles the job definitions name; the file systems; the buckets. Each drift is
printed with the fix, and the exit status is non-zero when there is any.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from confluence.batch import names

FIX_DEPLOY = (
    "render and deploy the configuration's resources: confluence infra template -o "
    "confluence.yaml && aws cloudformation deploy --template-file confluence.yaml ..."
)


@dataclass(frozen=True)
class Drift:
    resource: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"DRIFT {self.resource}: {self.problem}\n    fix: {self.fix}"


def clients(region: str) -> dict:
    import boto3

    session = boto3.session.Session(region_name=region)
    return {name: session.client(name) for name in ("batch", "efs", "s3", "iam")}


def _repository(image: str) -> str:
    """The image without its tag (a registry's port is no tag)."""
    head, _, tail = image.rpartition(":")
    return head if head and "/" not in tail else image


def _requirement(container: dict, kind: str) -> float | None:
    for req in container.get("resourceRequirements", []):
        if req["type"] == kind:
            return float(req["value"])
    return None


def _latest(batch, reference: str) -> dict | None:
    """The ACTIVE job definition a name, name:revision or ARN refers to (a bare name: its
    newest revision)."""
    if reference.startswith("arn:") or ":" in reference:
        found = batch.describe_job_definitions(jobDefinitions=[reference])["jobDefinitions"]
    else:
        found = batch.describe_job_definitions(jobDefinitionName=reference, status="ACTIVE")[
            "jobDefinitions"
        ]
    found = [d for d in found if d.get("status", "ACTIVE") == "ACTIVE"]
    return max(found, key=lambda d: d["revision"]) if found else None


class Checker:
    def __init__(self, config: dict, aws: dict) -> None:
        self.config = config
        self.batch, self.efs, self.s3, self.iam = (aws[k] for k in ("batch", "efs", "s3", "iam"))
        self.drifts: list[Drift] = []
        #: Differences that are no drift: an image deployed under another tag on purpose.
        self.notes: list[str] = []
        self.checks = 0
        self.file_systems = self._file_systems()
        self.access_points: dict[str, str] = {}

    def drift(self, resource: str, problem: str, fix: str) -> None:
        self.drifts.append(Drift(resource, problem, fix))

    def image(self, where: str, found: str | None, configured: str, fix: str) -> None:
        """Drift unless the image is the configured one; the same repository under another
        tag is a note (the template's ModuleImageTag and ProjectImageTag deploy a release)."""
        if found == configured:
            return
        if found and _repository(found) == _repository(configured):
            self.notes.append(f"{where}: image {found}, configured {configured} (another tag)")
            return
        self.drift(where, f"image {found}, configured {configured}", fix)

    def _file_systems(self) -> dict[str, dict]:
        """EFS file systems by their Name tag."""
        found = {}
        for page in self.efs.get_paginator("describe_file_systems").paginate():
            for fs in page["FileSystems"]:
                name = fs.get("Name") or next(
                    (t["Value"] for t in fs.get("Tags", []) if t["Key"] == "Name"), None
                )
                if name:
                    found[name] = fs
        return found

    def _file_system(self, name: str) -> dict | None:
        prefixed = self.config["aws"]["prefix"] + name
        return self.file_systems.get(prefixed) or self.file_systems.get(name)

    def _subpath(self, efs_config: dict) -> str:
        """The folder a volume exposes: its access point's root, else its rootDirectory."""
        point = efs_config.get("authorizationConfig", {}).get("accessPointId")
        if point:
            if point not in self.access_points:
                answer = self.efs.describe_access_points(AccessPointId=point)["AccessPoints"]
                root = answer[0].get("RootDirectory", {}).get("Path", "/") if answer else "/"
                self.access_points[point] = root
            return self.access_points[point].strip("/")
        return efs_config.get("rootDirectory", "/").strip("/")

    # -- checks --------------------------------------------------------------------------

    def queues(self) -> None:
        wanted = names.queues(self.config)
        found = {
            q["jobQueueName"]: q
            for q in self.batch.describe_job_queues(jobQueues=wanted)["jobQueues"]
        }
        found.update({q["jobQueueArn"]: q for q in found.values()})
        environments = set()
        for queue in wanted:
            self.checks += 1
            q = found.get(queue)
            if q is None:
                self.drift(f"job queue {queue}", "does not exist", FIX_DEPLOY)
                continue
            if q["state"] != "ENABLED":
                self.drift(
                    f"job queue {queue}",
                    f"state {q['state']}",
                    f"aws batch update-job-queue --job-queue {queue} --state ENABLED",
                )
            if q.get("status") not in (None, "VALID"):
                self.drift(
                    f"job queue {queue}",
                    f"status {q['status']}: {q.get('statusReason', '')}",
                    "fix the cause in the status reason, then deploy the template again",
                )
            if not q.get("computeEnvironmentOrder"):
                self.drift(f"job queue {queue}", "has no compute environment", FIX_DEPLOY)
            environments.update(c["computeEnvironment"] for c in q["computeEnvironmentOrder"])
        if environments:
            described = self.batch.describe_compute_environments(
                computeEnvironments=sorted(environments)
            )["computeEnvironments"]
            known = {c["computeEnvironmentArn"]: c for c in described}
            known.update({c["computeEnvironmentName"]: c for c in described})
            for ce in sorted(environments):
                self.checks += 1
                c = known.get(ce)
                if c is None:
                    self.drift(f"compute environment {ce}", "does not exist", FIX_DEPLOY)
                elif c.get("state") != "ENABLED" or c.get("status") not in (None, "VALID"):
                    self.drift(
                        f"compute environment {c['computeEnvironmentName']}",
                        f"state {c.get('state')}, status {c.get('status')} "
                        f"{c.get('statusReason', '')}".rstrip(),
                        "aws batch update-compute-environment --compute-environment "
                        f"{c['computeEnvironmentName']} --state ENABLED (a status INVALID "
                        "needs its reason fixed: subnets, roles, limits)",
                    )

    def job_definitions(self) -> set[str]:
        roles = set()
        for module, spec in self.config["modules"].items():
            reference = names.job_definition(self.config, module)
            self.checks += 1
            definition = _latest(self.batch, reference)
            if definition is None:
                self.drift(f"job definition {reference}", "no ACTIVE revision", FIX_DEPLOY)
                continue
            where = f"job definition {definition['jobDefinitionName']}:{definition['revision']}"
            fix = f"register a new revision with the configured values: {FIX_DEPLOY}"
            container = definition.get("containerProperties", {})
            self.image(where, container.get("image"), names.module_image(self.config, module), fix)
            vcpu, memory = _requirement(container, "VCPU"), _requirement(container, "MEMORY")
            if vcpu != float(spec["vcpu"]):
                self.drift(where, f"vCPU {vcpu}, configured {spec['vcpu']}", fix)
            if memory != float(spec["memory_mib"]):
                self.drift(where, f"memory {memory} MiB, configured {spec['memory_mib']}", fix)
            timeout = definition.get("timeout", {}).get("attemptDurationSeconds")
            if timeout != spec["timeout_seconds"]:
                self.drift(where, f"timeout {timeout} s, configured {spec['timeout_seconds']}", fix)
            attempts = definition.get("retryStrategy", {}).get("attempts", 1)
            if attempts != spec["retries"]:
                self.drift(where, f"{attempts} attempts, configured retries {spec['retries']}", fix)
            self._mounts(where, container, spec["mounts"], fix)
            roles.update(
                container[k] for k in ("jobRoleArn", "executionRoleArn") if container.get(k)
            )
        reference = names.publish_job_definition(self.config)
        self.checks += 1
        publish = _latest(self.batch, reference)
        if publish is None:
            self.drift(f"job definition {reference}", "no ACTIVE revision", FIX_DEPLOY)
        else:
            container = publish.get("containerProperties", {})
            image = names.project_image(self.config)
            self.image(
                f"job definition {reference}",
                container.get("image"),
                image,
                f"push the project's image ({image}) and deploy the template again",
            )
            mounts = names.publish_mounts(self.config)
            self._mounts(f"job definition {reference}", container, mounts, FIX_DEPLOY)
            roles.update(
                container[k] for k in ("jobRoleArn", "executionRoleArn") if container.get(k)
            )
        return roles

    def _mounts(self, where: str, container: dict, mounts: list[dict], fix: str) -> None:
        ids = {fs["FileSystemId"]: name for name, fs in self.file_systems.items()}
        prefix = self.config["aws"]["prefix"]
        volumes = {v["name"]: v.get("efsVolumeConfiguration") for v in container.get("volumes", [])}
        have = set()
        for point in container.get("mountPoints", []):
            efs_config = volumes.get(point["sourceVolume"])
            if not efs_config:
                continue
            name = ids.get(efs_config["fileSystemId"], efs_config["fileSystemId"])
            name = name.removeprefix(prefix) if prefix else name
            have.add((point["containerPath"], name, self._subpath(efs_config)))
        want = {(m["path"], m["filesystem"], m.get("subpath", "").strip("/")) for m in mounts}
        for path, fs, sub in sorted(want - have):
            self.drift(where, f"lacks the mount of {fs}/{sub} at {path}", fix)
        for path, fs, sub in sorted(have - want):
            self.drift(where, f"mounts {fs}/{sub} at {path}, which is not configured", fix)

    def roles(self, arns: set[str]) -> None:
        for arn in sorted(arns):
            self.checks += 1
            name = arn.rsplit("/", 1)[-1]
            try:
                self.iam.get_role(RoleName=name)
            except self.iam.exceptions.NoSuchEntityException:
                self.drift(f"IAM role {name}", "named by a job definition but missing", FIX_DEPLOY)

    def storage(self) -> None:
        for fs in self.config["filesystems"]:
            self.checks += 1
            found = self._file_system(fs)
            if found is None:
                self.drift(f"file system {fs}", "no EFS file system with this Name", FIX_DEPLOY)
            elif found.get("LifeCycleState") != "available":
                self.drift(
                    f"file system {fs} ({found['FileSystemId']})",
                    f"life cycle state {found.get('LifeCycleState')}",
                    "wait until it is available, or recreate it from the template",
                )
        for key in ("inputs", "publish", "state"):
            url = self.config["storage"].get(key)
            if not url or not url.startswith("s3://"):
                continue
            bucket = url[5:].split("/", 1)[0]
            self.checks += 1
            try:
                self.s3.head_bucket(Bucket=bucket)
            except Exception as err:  # 403, 404, or no route: all block the run
                self.drift(
                    f"bucket {bucket} (storage.{key})",
                    f"not reachable: {err}",
                    "create it with the template, or grant this role s3:ListBucket on it",
                )


@dataclass(frozen=True)
class Result:
    checks: int
    drifts: list[Drift]
    notes: list[str]

    def report(self, out=sys.stdout) -> None:
        for note in self.notes:
            print(f"note: {note}", file=out)
        for drift in self.drifts:
            print(drift, file=out)
        count = len(self.drifts)
        verdict = f"{count} drift(s): fix them before the run" if count else "no drift"
        print(f"preflight: {self.checks} resources checked, {verdict}", file=out)


def preflight(config: dict, aws: dict | None = None) -> Result:
    checker = Checker(config, aws or clients(config["aws"]["region"]))
    checker.queues()
    checker.roles(checker.job_definitions())
    checker.storage()
    return Result(checker.checks, checker.drifts, checker.notes)


def cli(args) -> int:
    from confluence.config import load

    config = load(args.configfile)
    result = preflight(config)
    result.report()
    return 1 if result.drifts else 0
