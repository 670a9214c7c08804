# SWOT observations of each reach of a chunk, from the raw granules.
rule input:
    input:
        unpack(inputs_of("input")),
    output:
        sentinel=sentinel("input", "{chunk}"),
    log:
        "logs/input/{chunk}.log",
    benchmark:
        "benchmarks/input/{chunk}.tsv"
    params:
        name="input",
        unit="{chunk}",
        module=module_config("input"),
        state=state_of("input"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
