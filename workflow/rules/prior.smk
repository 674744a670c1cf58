# Every scale's prior: the toy2d MLP, the tiny SD-shaped pipeline (with its sample grid), and
# sd15's models looked up in the local Hugging Face cache.


rule pretrain_toy2d_prior:
    input:
        checked(),
    output:
        model=f"{prior_dir('toy2d')}/config.json",
    log:
        f"logs/toy2d/pretrain_{os.path.basename(prior_dir('toy2d'))}.log",
    conda:
        ENV
    threads: 1
    params:
        out=folder_of("model"),
        prior=lambda w: config["toy2d"]["prior"],
    shell:
        "python -m nabla pretrain --scale toy2d --out {params.out} --seed {params.prior[seed]}"
        " --steps {params.prior[steps]} --threads {threads} > {log} 2>&1"


rule render_openmoji:
    output:
        f"{RUNS}/data/openmoji32.npz",
    log:
        "logs/data/render_openmoji.log",
    conda:
        ENV
    shell:
        "python -m nabla data --data-cache {output} > {log} 2>&1"


rule pretrain_tiny_prior:
    input:
        data=rules.render_openmoji.output,
        checked=checked(),
    output:
        model=f"{prior_dir('tiny')}/model_index.json",
        losses=f"{prior_dir('tiny')}/pretrain_log.csv",
    log:
        f"logs/tiny/pretrain_{os.path.basename(prior_dir('tiny'))}.log",
    conda:
        ENV
    threads: all_cores()
    resources:
        gpu=0,
    params:
        out=folder_of("model"),
        prior=lambda w: json.dumps(config["tiny"]["prior"], sort_keys=True),
    shell:
        "python -m nabla pretrain --scale tiny --out {params.out} --data-cache {input.data}"
        " --set '{params.prior}' --threads {threads} --no-progress > {log} 2>&1"


# The grid, and beside it its record (the tiles, labels and footer), from which `figures`
# redraws the committed grid without the prior (rule grid_from_record).
rule prior_samples:
    input:
        model=rules.pretrain_tiny_prior.output.model,
    output:
        report(
            f"{TREE}/{name_of('tiny')}/prior_samples.png",
            caption="../report/prior_samples.rst",
            category="tiny",
        ),
        f"{TREE}/{name_of('tiny')}/prior_samples.json",
    log:
        f"logs/{name_of('tiny')}/prior_samples.log",
    conda:
        ENV
    threads: all_cores()
    params:
        model=folder_of("model"),
        grid=lambda w: config["tiny"]["prior_samples"],
    shell:
        "python -m nabla sample --model {params.model} --seeds $(seq -s ' ' 0 $(({params.grid[seeds]} - 1)))"
        " --steps {params.grid[steps]} --guidance {params.grid[guidance]} --eta {params.grid[eta]}"
        " --credit --out {output[0]} --threads {threads} > {log} 2>&1"


# How well the prior draws each prompt word, measured: recognised by the learned reward's
# classifier, diverse, and covering the word's training images (nabla/prior_quality.py).
rule prior_quality:
    input:
        model=rules.pretrain_tiny_prior.output.model,
        data=rules.render_openmoji.output,
        classifier=REWARD_MODEL,
        features=FEATURES,
    output:
        multiext(f"{TREE}/{name_of('tiny')}/prior_quality", ".csv", ".md"),
    log:
        f"logs/{name_of('tiny')}/prior_quality.log",
    conda:
        ENV
    threads: all_cores()
    params:
        model=folder_of("model"),
        classifier=folder_of("classifier"),
        features=folder_of("features"),
        out=lambda w, output: os.path.splitext(output[0])[0],
        grid=lambda w: config["tiny"]["prior_samples"],
    shell:
        "python -m nabla prior-quality --model {params.model} --classifier {params.classifier}"
        " --features emoji={params.features} --data-cache {input.data} --samples {params.grid[quality_seeds]}"
        " --steps {params.grid[steps]} --guidance {params.grid[guidance]} --eta {params.grid[eta]}"
        " --out {params.out} --threads {threads} > {log} 2>&1"


# sd15 loads SD 1.5 and the reward models from the local Hugging Face cache: this job fails at
# once, naming every missing model and the command that fetches them, before any GPU job starts.
rule check_sd15_models:
    input:
        config=config["sd15"]["train_config"],
        checked=checked(),
    output:
        prior_marker("sd15"),
    log:
        "logs/sd15/check_models.log",
    conda:
        ENV
    params:
        features=" ".join(
            f"--features {config['sd15']['evaluation'][k]}"
            for k in ("features", "fid_features")
        ),
        rewards=" ".join(f"--reward {r}" for r in config["sd15"]["rewards"]),
    shell:
        "python -m nabla fetch-models --check --config {input.config} {params.rewards} {params.features}"
        " > {output} 2> {log}"
