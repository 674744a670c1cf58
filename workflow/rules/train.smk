# Fine-tune the prior: one job per (scale, protocol, reward, method) and group of seeds, which
# trains, evaluates and records its runs (`nabla runs`; each run resumable in its own folder).
# The prior is evaluated once per (scale, reward), from the training config alone.


rule runs:
    input:
        prior=lambda w: prior_marker(w.scale),
        config=lambda w: train_config_input(w.scale),
        models=run_models,
        selected=lambda w: (
            [f"{TREE}/{w.scale}{w.label}/selected.yaml"]
            if w.protocol == "tuned"
            else []
        ),
        checked=checked(),
    output:
        f"{RUNS}/records/{{scale}}{{label}}/{{protocol}}/{{reward}}/{{method}}/{{group}}.json",
    log:
        "logs/{scale}{label}/{protocol}/{reward}/{method}/{group}.log",
    wildcard_constraints:
        protocol="release|tuned",
    conda:
        ENV
    threads: 1
    resources:
        gpu=gpus,
    params:
        read=lambda w: train_settings_read(w.scale, [w.reward], w.method, w.protocol),
        root=lambda w: f"{RUNS}/{w.scale}{w.label}/{w.protocol}/{w.reward}/{w.method}",
        seeds=lambda w: group_members(w.group),
        model=lambda w: model_option(w.scale),
        budget=lambda w: budget_options(w.scale),
        settings=lambda w: shared_settings(w.scale, w.protocol),
        selected=lambda w, input: (
            f"--selected {input.selected[0]}" if input.selected else ""
        ),
        evaluation=lambda w: evaluation_options(w.scale),
    shell:
        "python -m nabla runs --scale {wildcards.scale} --protocol {wildcards.protocol}"
        " --method {wildcards.method} --reward {wildcards.reward} --seeds {params.seeds}"
        " --config {input.config} {params.model} {params.budget} --set '{params.settings}' {params.selected}"
        " --root {params.root} --out {output} --evaluate {params.evaluation} --threads {threads} > {log} 2>&1"


rule evaluate_prior:
    input:
        prior=lambda w: prior_marker(w.scale),
        config=lambda w: train_config_input(w.scale),
        models=run_models,
        checked=checked(),
    output:
        f"{RUNS}/records/{{scale}}{{label}}/prior/{{reward}}.json",
    log:
        "logs/{scale}{label}/prior/{reward}.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=gpus,
    params:
        read=lambda w: train_settings_read(w.scale, [w.reward]),
        model=lambda w: model_option(w.scale),
        evaluation=lambda w: evaluation_options(w.scale),
    shell:
        "python -m nabla evaluate-prior --config {input.config} --reward {wildcards.reward} {params.model}"
        " {params.evaluation} --out {output} --threads {threads} > {log} 2>&1"
