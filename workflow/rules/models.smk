# The tiny scale's two OpenMoji CNNs: the learned reward (emoji_class) and, apart from it, the
# evaluation features behind diversity and FID-to-prior.


rule train_tiny_reward:
    input:
        data=rules.render_openmoji.output,
        checked=checked(),
    output:
        model=REWARD_MODEL,
    log:
        "logs/tiny/train_reward.log",
    conda:
        ENV
    threads: 1
    params:
        out=folder_of("model"),
        model=lambda w: config["tiny"]["reward_model"],
    shell:
        "python -m nabla train-reward --out {params.out} --data-cache {input.data} --seed {params.model[seed]}"
        " --steps {params.model[steps]} --threads {threads} > {log} 2>&1"


rule train_tiny_features:
    input:
        data=rules.render_openmoji.output,
        checked=checked(),
    output:
        model=FEATURES,
    log:
        "logs/tiny/train_features.log",
    conda:
        ENV
    threads: 1
    params:
        out=folder_of("model"),
        model=lambda w: config["tiny"]["features"],
    shell:
        "python -m nabla train-features --out {params.out} --data-cache {input.data} --seed {params.model[seed]}"
        " --steps {params.model[steps]} --threads {threads} > {log} 2>&1"
