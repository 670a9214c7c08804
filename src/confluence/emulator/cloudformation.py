"""What moto 5.2.5's CloudFormation leaves out of the infrastructure template, put back.

The emulator deploys the rendered template (confluence.infra.template) as a stack. moto
creates its resources, but:

- ``AWS::Batch::JobDefinition`` drops ``Timeout``, ``PlatformCapabilities`` and
  ``PropagateTags`` (it reads ``timeout`` in lower case and passes None for the other two),
  so the stack's job definitions would have no per-attempt timeout, and the emulator would
  never stop a job that runs too long;
- ``AWS::Batch::JobQueue`` drops ``JobStateTimeLimitActions`` and ``Tags`` (moto's queues
  have neither);
- ``AWS::EFS::AccessPoint`` has no physical ID, so ``Ref`` gives moto's Python object
  instead of ``fsap-...``; neither file systems nor access points answer ``Fn::GetAtt``.

:func:`install` patches exactly these, in the emulator's process, so the stack's resources
carry what the template says, as on AWS: the job definitions' timeouts come from the
template, not from a second registration beside the stack. moto still does not act on
``jobStateTimeLimitActions`` (the emulator cancels nothing stuck in RUNNABLE); DescribeJobQueues
reports them. :func:`check` lists what of moto's internals changed.
"""

from __future__ import annotations

import inspect

_originals: dict[str, object] = {}
_MISSING = object()


def _classes() -> dict[str, type]:
    from moto.batch.models import JobDefinition, JobQueue
    from moto.efs.models import AccessPoint, FileSystem

    return {
        "JobDefinition": JobDefinition,
        "JobQueue": JobQueue,
        "AccessPoint": AccessPoint,
        "FileSystem": FileSystem,
    }


def _job_definition_from_cloudformation(
    cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
):
    from moto.batch.models import batch_backends
    from moto.batch.utils import lowercase_first_key

    properties = cloudformation_json["Properties"]
    backend = batch_backends[account_id][region_name]

    def lowered(key: str):
        value = properties.get(key)
        return lowercase_first_key(value) if value is not None else None

    return backend.register_job_definition(
        def_name=resource_name,
        parameters=properties.get("Parameters") or {},
        _type=properties.get("Type", "container"),
        tags=properties.get("Tags") or {},
        retry_strategy=lowered("RetryStrategy"),
        container_properties=lowered("ContainerProperties"),
        node_properties=lowered("NodeProperties"),
        eks_properties=lowered("EksProperties"),
        timeout=lowered("Timeout") or {},
        platform_capabilities=properties.get("PlatformCapabilities"),
        propagate_tags=properties.get("PropagateTags"),
    )


def _job_queue_from_cloudformation(
    cls, resource_name, cloudformation_json, account_id, region_name, **kwargs
):
    from moto.batch.models import batch_backends
    from moto.batch.utils import lowercase_first_key

    properties = cloudformation_json["Properties"]
    backend = batch_backends[account_id][region_name]
    queue = backend.create_job_queue(
        queue_name=resource_name,
        priority=properties["Priority"],
        state=properties.get("State", "ENABLED"),
        compute_env_order=[lowercase_first_key(o) for o in properties["ComputeEnvironmentOrder"]],
        schedule_policy=properties.get("SchedulingPolicyArn"),
        tags=properties.get("Tags") or None,
    )
    queue._emulator_time_limit_actions = [
        lowercase_first_key(a) for a in properties.get("JobStateTimeLimitActions") or []
    ]
    return queue


def _job_queue_describe(self) -> dict:
    result = _originals["JobQueue.describe"](self)
    actions = getattr(self, "_emulator_time_limit_actions", None)
    if actions:
        result["jobStateTimeLimitActions"] = [dict(a) for a in actions]
    return result


def _access_point_id(self) -> str:
    return self.access_point_id


def _access_point_attribute(self, attribute: str):
    if attribute == "Arn":
        return self.access_point_arn
    if attribute == "AccessPointId":
        return self.access_point_id
    raise NotImplementedError(f'"Fn::GetAtt" : [ "{{0}}" , "{attribute}" ]"')


def _file_system_attribute(self, attribute: str):
    if attribute == "Arn":
        return self.file_system_arn
    if attribute == "FileSystemId":
        return self.file_system_id
    raise NotImplementedError(f'"Fn::GetAtt" : [ "{{0}}" , "{attribute}" ]"')


_PATCHES = {
    "JobDefinition.create_from_cloudformation_json": classmethod(
        _job_definition_from_cloudformation
    ),
    "JobQueue.create_from_cloudformation_json": classmethod(_job_queue_from_cloudformation),
    "JobQueue.describe": _job_queue_describe,
    "AccessPoint.physical_resource_id": property(_access_point_id),
    "AccessPoint.get_cfn_attribute": _access_point_attribute,
    "FileSystem.get_cfn_attribute": _file_system_attribute,
}


def check() -> list[str]:
    """What of moto's internals these patches rely on is missing or changed ([] = fine)."""
    from moto.batch.models import BatchBackend
    from moto.efs.models import AccessPoint, FileSystem

    problems = []
    expected = {
        "register_job_definition": [
            "self",
            "def_name",
            "parameters",
            "_type",
            "tags",
            "retry_strategy",
            "container_properties",
            "node_properties",
            "eks_properties",
            "timeout",
            "platform_capabilities",
            "propagate_tags",
        ],
        "create_job_queue": [
            "self",
            "queue_name",
            "priority",
            "schedule_policy",
            "state",
            "compute_env_order",
            "tags",
        ],
    }
    for name, parameters in expected.items():
        method = getattr(BatchBackend, name, None)
        found = list(inspect.signature(method).parameters) if method else []
        if sorted(found) != sorted(parameters):
            problems.append(f"BatchBackend.{name} takes {found}, expected {parameters}")
    for cls, attributes in (
        (AccessPoint, ("access_point_id", "access_point_arn")),
        (FileSystem, ("file_system_id", "file_system_arn")),
    ):
        source = inspect.getsource(cls.__init__)
        for attribute in attributes:
            if f"self.{attribute}" not in source:
                problems.append(f"{cls.__name__}.__init__ no longer sets self.{attribute}")
    return problems


def install() -> None:
    """Patch moto's CloudFormation models (once per process)."""
    classes = _classes()
    for dotted, replacement in _PATCHES.items():
        owner, name = dotted.split(".")
        if dotted not in _originals:
            _originals[dotted] = classes[owner].__dict__.get(name, _MISSING)
        setattr(classes[owner], name, replacement)


def uninstall() -> None:
    classes = _classes()
    for dotted, original in _originals.items():
        owner, name = dotted.split(".")
        if original is _MISSING:
            delattr(classes[owner], name)
        else:
            setattr(classes[owner], name, original)
    _originals.clear()
