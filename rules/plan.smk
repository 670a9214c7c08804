# The plan: each chunk's (and continent's) own work lists on the input file system,
# so a container indexes into its chunk's list exactly as into the global one.
rule plan:
    output:
        expand(
            "{efs}/input/worklists/{{unit}}/{name}",
            efs=EFS,
            name=WORKLISTS,
        ),
    log:
        "logs/plan/{unit}.log",
    benchmark:
        "benchmarks/plan/{unit}.tsv"
    params:
        # Changes only when this unit's work lists change: other chunks stay finished.
        digest=worklists_digest,
        spec=PLAN_SPEC,
        output_dir=f"{EFS}/input/worklists/{{unit}}",
    shell:
        "confluence worklists {wildcards.unit} --spec {params.spec:q}"
        " --output-dir {params.output_dir:q} > {log:q} 2>&1"


# The synthetic domain, generated on demand into the inputs "bucket" (storage.inputs):
# SWORD, the previous SoS, gauges and raw SWOT granules, plus the true discharge for checks.
rule synthesize:
    output:
        sword=f"{INPUTS}/sword/{{continent}}_sword_v16.nc",
        sos=f"{INPUTS}/sos/previous/{{continent}}_sword_v16_SOS_priors.nc",
        gauges=f"{INPUTS}/gage/{{continent}}_gauges.nc",
        truth=f"{config['paths']['truth']}/{{continent}}_truth.nc",
    log:
        "logs/synthesize/{continent}.log",
    benchmark:
        "benchmarks/synthesize/{continent}.tsv"
    params:
        domain=json.dumps(config["domain"], sort_keys=True),
        input_dir=input_fs_of,
        truth_dir=truth_dir_of,
    shell:
        "confluence synthesize --domain {params.domain:q} --continent {wildcards.continent}"
        " --input-dir {params.input_dir:q} --truth-dir {params.truth_dir:q} > {log:q} 2>&1"
