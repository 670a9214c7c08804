# The continent's SoS results file, once every chunk of it is validated.
rule output:
    input:
        unpack(inputs_of("output")),
    output:
        sentinel=sentinel("output", "{continent}"),
    log:
        "logs/output/{continent}.log",
    benchmark:
        "benchmarks/output/{continent}.tsv"
    params:
        name="output",
        unit="{continent}",
        module=module_config("output"),
        state=state_of("output"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
