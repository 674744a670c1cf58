# Metrics of each finished run, and of the prior as the reference row (same seeds, same noise).

ruleorder: evaluate_toy2d_prior > evaluate_toy2d


rule evaluate_toy2d:
    input:
        done=f"{RUNS}/toy2d/{{reward}}/{{method}}/seed{{seed}}/done.json",
    output:
        "results/toy2d/metrics/{reward}/{method}/seed{seed}.json",
    log:
        "logs/toy2d/evaluate/{reward}/{method}/seed{seed}.log",
    params:
        run=folder_of("done"),
        evaluation=config["toy2d"]["evaluation"],
    threads: 1
    conda:
        ENV
    shell:
        "python -m nabla evaluate --run {params.run} --out {output} --beta {params.evaluation[beta]}"
        " --samples {params.evaluation[samples]} --threads {threads} > {log} 2>&1"


rule evaluate_toy2d_prior:
    input:
        # the prior is evaluated under the first method's run config (sampler, reward)
        done=lambda w: f"{RUNS}/toy2d/{w.reward}/{config['toy2d']['methods'][0]}/seed{w.seed}/done.json",
    output:
        "results/toy2d/metrics/{reward}/pretrained/seed{seed}.json",
    log:
        "logs/toy2d/evaluate/{reward}/pretrained/seed{seed}.log",
    params:
        run=folder_of("done"),
        evaluation=config["toy2d"]["evaluation"],
    threads: 1
    conda:
        ENV
    shell:
        "python -m nabla evaluate --prior --run {params.run} --out {output} --beta {params.evaluation[beta]}"
        " --samples {params.evaluation[samples]} --threads {threads} > {log} 2>&1"
