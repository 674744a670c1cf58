# Aggregate per-run metrics into the summary CSV and mean ± std tables.


rule toy2d_tables:
    input:
        toy2d_metric_files(),
    output:
        summary="results/toy2d/summary.csv",
        table=multiext("results/toy2d/table", ".md", ".tex"),
        masses=multiext("results/toy2d/table_masses", ".md", ".tex"),
    log:
        "logs/toy2d/tables.log",
    params:
        stem=lambda w, output: os.path.splitext(output.table[0])[0],
    conda:
        ENV
    shell:
        "python -m nabla aggregate --metrics {input} --summary {output.summary} --table {params.stem}"
        " --columns reward_mean energy_distance_target mass_tv_target energy_distance_prior"
        " --vector-columns masses --title 'toy2d, exact target p#·exp(βr)' > {log} 2>&1"
