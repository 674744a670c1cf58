# Metrics of each finished run, and of the prior as the reference row (same seeds, same noise).

ruleorder: evaluate_prior > evaluate


rule evaluate:
    input:
        done=f"{RUNS}/{{scale}}/{{reward}}/{{method}}/seed{{seed}}/done.json",
        models=lambda w: evaluation_models(w.scale),
    output:
        "results/{scale}/metrics/{reward}/{method}/seed{seed}.json",
    log:
        "logs/{scale}/evaluate/{reward}/{method}/seed{seed}.log",
    params:
        run=folder_of("done"),
        options=lambda w: evaluation_options(w.scale),
    threads: 1
    resources:
        gpu=gpus,
    conda:
        ENV
    shell:
        "python -m nabla evaluate --run {params.run} --out {output} {params.options}"
        " --threads {threads} > {log} 2>&1"


rule evaluate_prior:
    input:
        # the prior is evaluated under the first method's run config (sampler, reward)
        done=lambda w: f"{RUNS}/{w.scale}/{w.reward}/{config[w.scale]['methods'][0]}/seed{w.seed}/done.json",
        models=lambda w: evaluation_models(w.scale),
    output:
        "results/{scale}/metrics/{reward}/pretrained/seed{seed}.json",
    log:
        "logs/{scale}/evaluate/{reward}/pretrained/seed{seed}.log",
    params:
        run=folder_of("done"),
        options=lambda w: evaluation_options(w.scale),
    threads: 1
    resources:
        gpu=gpus,
    conda:
        ENV
    shell:
        "python -m nabla evaluate --prior --run {params.run} --out {output} {params.options}"
        " --threads {threads} > {log} 2>&1"
