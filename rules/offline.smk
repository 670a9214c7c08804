# Discharge per algorithm from the integrated parameters, with uncertainty and a consensus.
rule offline:
    input:
        unpack(inputs_of("offline")),
    output:
        sentinel=sentinel("offline", "{chunk}"),
    log:
        "logs/offline/{chunk}.log",
    benchmark:
        "benchmarks/offline/{chunk}.tsv"
    params:
        name="offline",
        unit="{chunk}",
        module=module_config("offline"),
        state=state_of("offline"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
