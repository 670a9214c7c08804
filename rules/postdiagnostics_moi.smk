# Realism and stability flags of the integrated discharge.
rule postdiagnostics_moi:
    input:
        unpack(inputs_of("postdiagnostics_moi")),
    output:
        sentinel=sentinel("postdiagnostics_moi", "{chunk}"),
    log:
        "logs/postdiagnostics_moi/{chunk}.log",
    benchmark:
        "benchmarks/postdiagnostics_moi/{chunk}.tsv"
    params:
        name="postdiagnostics_moi",
        unit="{chunk}",
        module=module_config("postdiagnostics_moi"),
        state=state_of("postdiagnostics_moi"),
        efs=EFS,
        run_type=config["run"]["run_type"],
    shell:
        RUN_CHUNK
