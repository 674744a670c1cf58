# A protocol's records → its tables and figures (runs/results), then each scale's result set
# published to results/<name>. `snakemake figures` redraws the committed results/ from results/ alone.


rule aggregate:
    input:
        groups=lambda w: records(w.scale, w.protocol),
        priors=lambda w: prior_records(w.scale) if w.protocol != "tune" else [],
    output:
        [f"{TREE}/{{scale}}{{label}}/{{protocol}}/{name}" for name in PROTOCOL_FILES],
    log:
        "logs/{scale}{label}/{protocol}/aggregate.log",
    wildcard_constraints:
        protocol="release|tuned|tune",
    conda:
        ENV
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        priors=lambda w, input: (
            f"--priors {' '.join(input.priors)}" if input.priors else ""
        ),
    shell:
        "python -m nabla aggregate --scale {wildcards.scale} --protocol {wildcards.protocol}"
        " --groups {input.groups} {params.priors} --out {params.out} > {log} 2>&1"


rule figures_of_a_reward:
    input:
        [
            f"{{tree}}/{{scale}}{{label}}/{{protocol}}/{name}"
            for name in ("summary.csv", "curves.csv", "levels.json", "samples.json")
        ],
    output:
        [
            (
                report(
                    f"{{tree}}/{{scale}}{{label}}/{{protocol}}/figures/{kind}_{{reward}}.{ext}",
                    caption=f"../report/{kind}.rst",
                    category="{scale}{label}",
                    subcategory="{protocol} protocol",
                )
                if ext == "png"
                else f"{{tree}}/{{scale}}{{label}}/{{protocol}}/figures/{kind}_{{reward}}.{ext}"
            )
            for kind in FIGURE_KINDS
            for ext in ("png", "pdf")
        ],
    log:
        "logs/{tree}/{scale}{label}/{protocol}/figures_{reward}.log",
    wildcard_constraints:
        protocol="release|tuned",
        # any committed set's label, not only the config's (`figures` redraws every set present)
        label=r"(?:-[\w.-]+)?",
    conda:
        ENV
    params:
        results=lambda w, input: os.path.dirname(input[0]),
    shell:
        "python -m nabla figures --scale {wildcards.scale} --results {params.results} --reward {wildcards.reward}"
        " > {log} 2>&1"


rule toy2d_exactness:
    input:
        prior=lambda w: prior_marker("toy2d"),
        config=lambda w: train_config_input("toy2d"),
        priors=lambda w: prior_records("toy2d"),
    output:
        csv=f"{TREE}/{name_of('toy2d')}/exactness.csv",
        md=f"{TREE}/{name_of('toy2d')}/exactness.md",
    log:
        "logs/toy2d/exactness.log",
    conda:
        ENV
    threads: 1
    params:
        read=lambda w: train_settings_read("toy2d", config["toy2d"]["rewards"]),
        rewards=lambda w: " ".join(config["toy2d"]["rewards"]),
        samples=lambda w: config["toy2d"]["evaluation"]["samples"],
        model=lambda w: model_option("toy2d"),
    shell:
        "python -m nabla exactness --config {input.config} {params.model} --rewards {params.rewards}"
        " --priors {input.priors} --samples {params.samples} --out {output.csv} --threads {threads} > {log} 2>&1"


rule publish:
    input:
        lambda w: scale_results(w.scale),
    output:
        f"{RUNS}/published/{{scale}}{{label}}.json",
    log:
        "logs/{scale}{label}/publish.log",
    conda:
        ENV
    params:
        source=lambda w: f"{TREE}/{w.scale}{w.label}",
        to=lambda w: f"results/{w.scale}{w.label}",
    shell:
        "python -m nabla publish --source {params.source} --to {params.to} --marker {output} > {log} 2>&1"


# A committed sample grid (the tiny prior's) from its record beside it, without the prior.
rule grid_from_record:
    input:
        "results/{set}/prior_samples.json",
    output:
        "results/{set}/prior_samples.png",
    log:
        "logs/results/{set}/prior_samples.log",
    wildcard_constraints:
        set=r"[^/]+",
    localrule: True
    conda:
        ENV
    shell:
        "python -m nabla redraw --grid {input} > {log} 2>&1"


# The bench's figures from its committed CSVs. Its CSVs are not named as inputs: the bench rule
# makes them, and `--forceall figures` would then rerun the benchmark; the files are read from
# the folder, so this job reruns on --forceall or when a figure is missing.
rule bench_figures:
    output:
        "results/bench/reward_{bench_scale}.png",
        "results/bench/reward_{bench_scale}.pdf",
    log:
        "logs/results/bench/reward_{bench_scale}.log",
    wildcard_constraints:
        bench_scale="|".join(SCALES),
    localrule: True
    conda:
        ENV
    shell:
        "python -m nabla redraw --bench results/bench --scale {wildcards.bench_scale} > {log} 2>&1"


ruleorder: bench_figures > bench


# Redraw every committed figure from the committed results alone (no run folder, no training):
# every result set present under results/ (whatever config made it), its protocols' figures, its
# prior grid and the bench's figures (redrawn_figures).
rule figures:
    input:
        redrawn_figures(),
        f"{RUNS}/readme/results.txt",
