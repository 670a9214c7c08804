# The SWOT Confluence workflow: a table of contents. The rules live in rules/,
# the logic in the confluence package (src/confluence).
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


# Rules that run on the controller whatever the executor: on AWS Batch only the module
# rules become Batch jobs (the controller sees the file systems).
localrules:
    all,
    plan,
    synthesize,
    stage_in,
    summary,


include: "rules/plan.smk"
include: "rules/stage_in.smk"
include: "rules/input.smk"
include: "rules/priors.smk"
include: "rules/prediagnostics.smk"
include: "rules/flpe.smk"
include: "rules/postdiagnostics_flpe.smk"
include: "rules/moi.smk"
include: "rules/postdiagnostics_moi.smk"
include: "rules/offline.smk"
include: "rules/validation.smk"
include: "rules/output.smk"
include: "rules/summary.smk"


rule all:
    default_target: True
    input:
        WF.targets(),
        "results/summary/modules.csv",
