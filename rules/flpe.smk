# One rule for every FLPE algorithm; which ones run is config[flpe][algorithms].
rule flpe:
    input:
        unpack(inputs_of("flpe")),
    output:
        sentinel=sentinel("{algorithm}", "{chunk}"),
    log:
        "logs/{algorithm}/{chunk}.log",
    benchmark:
        "benchmarks/{algorithm}/{chunk}.tsv"
    params:
        name="{algorithm}",
        unit="{chunk}",
        module=module_config("flpe"),
        state=state_of("flpe"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
