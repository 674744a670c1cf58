# Aggregate per-run metrics into the summary CSV and mean ± std tables.


rule toy2d_tables:
    input:
        metric_files("toy2d"),
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


rule curves:
    input:
        lambda w: run_dones(w.scale),
    output:
        "results/{scale}/curves.csv",
    log:
        "logs/{scale}/curves.log",
    params:
        runs=lambda w, input: [os.path.dirname(f) for f in input],
    conda:
        ENV
    shell:
        "python -m nabla curves --runs {params.runs} --out {output} > {log} 2>&1"


# Figures read only results/ (committed), so `snakemake figures` redraws them on a fresh clone.
rule toy2d_figures:
    input:
        summary=rules.toy2d_tables.output.summary,
        curves="results/toy2d/curves.csv",
        metrics=metric_files("toy2d"),
    output:
        [report(f, caption="../report/toy2d_figures.rst", category="toy2d") if f.endswith(".png") else f
         for f in toy2d_figure_files()],
    log:
        "logs/toy2d/figures.log",
    params:
        results=lambda w, input: os.path.dirname(input.summary),
    conda:
        ENV
    shell:
        "python -m nabla figures --scale toy2d --results {params.results} > {log} 2>&1"


# tiny and sd15: reward, diversity and FID-to-prior on held-out prompts.
rule image_tables:
    input:
        lambda w: metric_files(w.scale),
    output:
        summary="results/{scale}/summary.csv",
        table=multiext("results/{scale}/table", ".md", ".tex"),
    wildcard_constraints:
        scale="tiny|sd15",
    log:
        "logs/{scale}/tables.log",
    params:
        stem=lambda w, output: os.path.splitext(output.table[0])[0],
    conda:
        ENV
    shell:
        "python -m nabla aggregate --metrics {input} --summary {output.summary} --table {params.stem}"
        " --columns reward_mean diversity fid_to_prior fid_to_prior_pooled"
        " --title '{wildcards.scale}, held-out prompts' > {log} 2>&1"


rule image_figures:
    input:
        summary="results/{scale}/summary.csv",
        curves="results/{scale}/curves.csv",
        metrics=lambda w: metric_files(w.scale),
    output:
        [report(f, caption="../report/image_figures.rst", category="{scale}") if f.endswith(".png") else f
         for f in image_figure_files("{scale}")],
    wildcard_constraints:
        scale="tiny|sd15",
    log:
        "logs/{scale}/figures_{reward}.log",
    params:
        results=lambda w, input: os.path.dirname(input.summary),
    conda:
        ENV
    shell:
        "python -m nabla figures --scale {wildcards.scale} --reward {wildcards.reward} --results {params.results}"
        " > {log} 2>&1"


rule figures:
    input:
        rules.toy2d_figures.output,
        image_figure_files("tiny") if config["tiny"]["methods"] else [],


# The benchmark (not part of `all`): `snakemake --cores all bench`; see nabla/bench.py.
rule bench:
    input:
        tiny=prior_marker("tiny"),
        toy2d=prior_marker("toy2d"),
    output:
        multiext("results/bench/", "methods.csv", "curves.csv", "sampler.csv", "bench.md",
                 "reward_toy2d.png", "reward_toy2d.pdf", "reward_tiny.png", "reward_tiny.pdf"),
    log:
        "logs/bench.log",
    threads: all_cores()
    conda:
        ENV
    shell:
        "python -m nabla bench --scale toy2d tiny --out results/bench --threads {threads} > {log} 2>&1"
