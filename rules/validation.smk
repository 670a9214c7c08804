# Statistics and hydrographs against gauges.
rule validation:
    input:
        unpack(inputs_of("validation")),
    output:
        sentinel=sentinel("validation", "{chunk}"),
    log:
        "logs/validation/{chunk}.log",
    benchmark:
        "benchmarks/validation/{chunk}.tsv"
    params:
        name="validation",
        unit="{chunk}",
        module=module_config("validation"),
        state=state_of("validation"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
