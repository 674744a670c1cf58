# Pretrain the tiny prior on OpenMoji and draw its sample grid.


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
        rules.render_openmoji.output,
    output:
        model=f"{prior_dir('tiny')}/model_index.json",
        losses=f"{prior_dir('tiny')}/pretrain_log.csv",
    log:
        "logs/tiny/pretrain_prior.log",
    params:
        out=folder_of("model"),
        prior=config["tiny"]["prior"],
    threads: all_cores()
    resources:
        gpu=0,
    conda:
        ENV
    shell:
        "python -m nabla pretrain --scale tiny --out {params.out} --data-cache {input}"
        " --seed {params.prior[seed]} --vae-steps {params.prior[vae_steps]}"
        " --unet-steps {params.prior[unet_steps]} --threads {threads} 2>&1 | tee {log}"


rule prior_samples:
    input:
        model=rules.pretrain_tiny_prior.output.model,
    output:
        report("results/tiny/prior_samples.png", caption="../report/prior_samples.rst", category="tiny"),
    log:
        "logs/tiny/prior_samples.log",
    params:
        model=folder_of("model"),
        grid=config["tiny"]["prior_samples"],
    threads: all_cores()
    conda:
        ENV
    shell:
        "python -m nabla sample --model {params.model} --seeds $(seq -s ' ' 0 $(({params.grid[seeds]} - 1)))"
        " --steps {params.grid[steps]} --guidance {params.grid[guidance]} --eta {params.grid[eta]}"
        " --credit --out {output} --threads {threads} > {log} 2>&1"


# The tiny scale's two OpenMoji CNNs: the learned reward and, apart from it, the evaluation features.
rule train_tiny_reward:
    input:
        rules.render_openmoji.output,
    output:
        model=REWARD_MODEL,
    log:
        "logs/tiny/train_reward.log",
    params:
        out=folder_of("model"),
        model=config["tiny"]["reward_model"],
    threads: 1
    conda:
        ENV
    shell:
        "python -m nabla train-reward --out {params.out} --data-cache {input} --seed {params.model[seed]}"
        " --steps {params.model[steps]} --threads {threads} > {log} 2>&1"


rule train_tiny_features:
    input:
        rules.render_openmoji.output,
    output:
        model=FEATURES,
    log:
        "logs/tiny/train_features.log",
    params:
        out=folder_of("model"),
        model=config["tiny"]["features"],
    threads: 1
    conda:
        ENV
    shell:
        "python -m nabla train-features --out {params.out} --data-cache {input} --seed {params.model[seed]}"
        " --steps {params.model[steps]} --threads {threads} > {log} 2>&1"
