# A per-module table (items done, failed, tolerated) and the validation figures, for
# `snakemake --report`.
rule summary:
    input:
        # Every sentinel is upstream of the continents' outputs, so these suffice for the DAG.
        WF.targets(),
    output:
        table=report(
            "results/summary/modules.csv",
            caption="../report/modules.rst",
            category="Summary",
        ),
        figures=report(
            directory("results/summary/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Validation",
        ),
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/summary/summary.tsv"
    params:
        sentinels=WF.all_sentinels(),
        efs=EFS,
    shell:
        "confluence summary {params.sentinels:q} --efs {params.efs:q} --table {output.table:q}"
        " --figures {output.figures:q} > {log:q} 2>&1"
