# Thin bindings to the confluence package: validation, wildcard constraints, inputs.
import json
from pathlib import Path

from confluence.batch.mirror import pull_state
from confluence.config import validate as validate_config
from confluence.workflow import WORKLISTS, Workflow, plan_spec, sentinel, state

# Stop before any job on a bad value, naming the key path and the allowed values.
config.update(validate_config(config))
WF = Workflow(config)

# Sentinels and state a Batch controller mirrored (possibly from another machine) come
# back before the DAG is built, so this run resumes where that one stopped.
if WF.state_mirror:
    pull_state(WF.state_mirror)

EFS = WF.efs
INPUTS = config["storage"]["inputs"]
PLAN_SPEC = json.dumps(plan_spec(config), sort_keys=True, separators=(",", ":"))


wildcard_constraints:
    chunk=r"[a-z]{2}_[A-Za-z0-9_-]+",
    continent=r"[a-z]{2}",
    unit=r"[a-z]{2}(_[A-Za-z0-9_-]+)?",
    algorithm="|".join(WF.algorithms),


# One shell command for every module rule: the runner reads the module's configuration,
# and publishes the chunk's outputs to storage.publish once the chunk counts as done.
RUN_CHUNK = (
    "confluence run-chunk {params.name} {params.unit} --module-config {params.module:q}"
    " --efs {params.efs:q} --sentinel {output.sentinel:q} --state {params.state:q}"
    " --upstream {input.upstream:q} --run-type {params.run_type} --workers {threads}"
    f"{WF.publish_option} > {{log:q}} 2>&1"
)


def unit_of(wildcards):
    return wildcards.get("chunk") or wildcards.get("continent")


def inputs_of(name):
    def inputs(wildcards):
        return WF.inputs(wildcards.get("algorithm", name), unit_of(wildcards))

    return inputs


def module_config(name):
    def value(wildcards):
        return WF.module_json(wildcards.get("algorithm", name))

    return value


def state_of(name):
    def value(wildcards):
        return state(wildcards.get("algorithm", name), unit_of(wildcards))

    return value


def worklists_digest(wildcards):
    return WF.worklists_digest(wildcards.unit)


def input_fs_of(wildcards, output):
    """The input file system folder, from the SWORD file the rule writes there."""
    return str(Path(output.sword).parents[1])


def truth_dir_of(wildcards, output):
    return str(Path(output.truth).parent)


def staging_sources(wildcards):
    """What stage-in copies from: the synthetic domain's files when it is generated here."""
    return WF.staging_sources(wildcards.continent)
