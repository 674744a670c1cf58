# Fine-tune a prior: one job per (scale, reward, method, seed).


rule pretrain_toy2d_prior:
    output:
        model=f"{prior_dir('toy2d')}/config.json",
    log:
        "logs/toy2d/pretrain_prior.log",
    params:
        out=folder_of("model"),
        prior=config["toy2d"]["prior"],
    threads: 1
    conda:
        ENV
    shell:
        "python -m nabla pretrain --scale toy2d --out {params.out} --seed {params.prior[seed]}"
        " --steps {params.prior[steps]} --threads {threads} > {log} 2>&1"


# sd15 loads SD 1.5 and the reward models from the local Hugging Face cache: this job fails at
# once, naming every missing model and the command that fetches them, before any GPU job starts.
rule check_sd15_models:
    input:
        config["sd15"]["train_config"],
    output:
        prior_marker("sd15"),
    log:
        "logs/sd15/check_models.log",
    params:
        features=" ".join(f"--features {config['sd15']['evaluation'][k]}" for k in ("features", "fid_features")),
        rewards=" ".join(f"--reward {r}" for r in config["sd15"]["rewards"]),
    conda:
        ENV
    shell:
        "python -m nabla fetch-models --check --config {input} {params.rewards} {params.features} > {output} 2> {log}"


rule train:
    input:
        prior=lambda w: prior_marker(w.scale),
        config=lambda w: config[w.scale]["train_config"],
        reward_model=lambda w: [REWARD_MODEL] if w.reward == "emoji_class" else [],
    output:
        done=f"{RUNS}/{{scale}}/{{reward}}/{{method}}/seed{{seed}}/done.json",
    log:
        "logs/{scale}/train/{reward}/{method}/seed{seed}.log",
    params:
        out=folder_of("done"),
        model=lambda w: model_option(w.scale),
        budget=lambda w: budget_options(w.scale),
    threads: 1
    resources:
        gpu=gpus,
    conda:
        ENV
    shell:
        "python -m nabla train --method {wildcards.method} --reward {wildcards.reward}"
        " --seed {wildcards.seed} --config {input.config} {params.model} {params.budget} --out {params.out}"
        " --on-config-change restart --threads {threads} --no-progress > {log} 2>&1"
