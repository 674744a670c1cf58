# The benchmark (not part of `all`): `snakemake --cores all bench`; see nabla/bench.py.


rule bench:
    input:
        tiny=prior_marker("tiny"),
        toy2d=prior_marker("toy2d"),
    output:
        multiext(
            "results/bench/",
            "methods.csv",
            "curves.csv",
            "sampler.csv",
            "bench.md",
            "reward_toy2d.png",
            "reward_toy2d.pdf",
            "reward_tiny.png",
            "reward_tiny.pdf",
        ),
    log:
        "logs/bench.log",
    conda:
        ENV
    threads: all_cores()
    params:
        model=lambda w: f"toy2d={prior_dir('toy2d')},tiny={prior_dir('tiny')}",
    shell:
        "python -m nabla bench --scale toy2d tiny --model {params.model} --out results/bench"
        " --threads {threads} > {log} 2>&1"
