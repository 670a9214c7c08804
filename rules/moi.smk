# Basin-consistent mean flows and refitted parameters, per basin of the chunk.
rule moi:
    input:
        unpack(inputs_of("moi")),
    output:
        sentinel=sentinel("moi", "{chunk}"),
    log:
        "logs/moi/{chunk}.log",
    benchmark:
        "benchmarks/moi/{chunk}.tsv"
    params:
        name="moi",
        unit="{chunk}",
        module=module_config("moi"),
        state=state_of("moi"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
