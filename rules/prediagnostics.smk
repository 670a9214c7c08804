# Quality flags for each observation of a chunk's reaches.
rule prediagnostics:
    input:
        unpack(inputs_of("prediagnostics")),
    output:
        sentinel=sentinel("prediagnostics", "{chunk}"),
    log:
        "logs/prediagnostics/{chunk}.log",
    benchmark:
        "benchmarks/prediagnostics/{chunk}.tsv"
    params:
        name="prediagnostics",
        unit="{chunk}",
        module=module_config("prediagnostics"),
        state=state_of("prediagnostics"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
