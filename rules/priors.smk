# A new SoS version per continent, from gauges and model priors; needs every input chunk of the continent.
rule priors:
    input:
        unpack(inputs_of("priors")),
    output:
        sentinel=sentinel("priors", "{continent}"),
    log:
        "logs/priors/{continent}.log",
    benchmark:
        "benchmarks/priors/{continent}.tsv"
    params:
        name="priors",
        unit="{continent}",
        module=module_config("priors"),
        state=state_of("priors"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
