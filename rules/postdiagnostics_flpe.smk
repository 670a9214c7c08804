# Realism and stability flags over every FLPE algorithm's discharge.
rule postdiagnostics_flpe:
    input:
        unpack(inputs_of("postdiagnostics_flpe")),
    output:
        sentinel=sentinel("postdiagnostics_flpe", "{chunk}"),
    log:
        "logs/postdiagnostics_flpe/{chunk}.log",
    benchmark:
        "benchmarks/postdiagnostics_flpe/{chunk}.tsv"
    params:
        name="postdiagnostics_flpe",
        unit="{chunk}",
        module=module_config("postdiagnostics_flpe"),
        state=state_of("postdiagnostics_flpe"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
