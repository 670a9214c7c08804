# Stage-in: copy a continent's inputs from storage.inputs (S3, or a local folder standing in
# for the bucket) into the input file system, verified and incremental.
rule stage_in:
    input:
        unpack(staging_sources),
    output:
        sword=f"{EFS}/input/sword/{{continent}}_sword_v16.nc",
        sos=f"{EFS}/input/sos/previous/{{continent}}_sword_v16_SOS_priors.nc",
        gauges=f"{EFS}/input/gage/{{continent}}_gauges.nc",
        raw=directory(f"{EFS}/input/swot_raw/{{continent}}"),
    log:
        "logs/stage_in/{continent}.log",
    benchmark:
        "benchmarks/stage_in/{continent}.tsv"
    params:
        source=config["storage"]["inputs"],
        destination=input_fs_of,
    shell:
        "confluence sync {params.source:q} {params.destination:q} --exclude '*'"
        " --include 'sword/{wildcards.continent}_*'"
        " --include 'sos/previous/{wildcards.continent}_*'"
        " --include 'gage/{wildcards.continent}_*'"
        " --include 'swot_raw/{wildcards.continent}/*' > {log:q} 2>&1"
        # A domain without observations has no granules: the folder is still the output.
        " && mkdir -p {output.raw:q}"
