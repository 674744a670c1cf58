# Tuned alike: every method gets the same number of runs (`tune.runs_per_method`) over its own
# knobs (`tune.grids`), trained on the training prompts at one seed and measured on the validation
# split; one selection rule (nabla.protocol) picks each method's settings for the tuned protocol.


rule tune_runs:
    input:
        prior=lambda w: prior_marker(w.scale),
        config=lambda w: train_config_input(w.scale),
        models=run_models,
        checked=checked(),
    output:
        f"{RUNS}/records/{{scale}}{{label}}/tune/{{reward}}/{{method}}/{{group}}.json",
    log:
        "logs/{scale}{label}/tune/{reward}/{method}/{group}.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=gpus,
    params:
        read=lambda w: train_settings_read(w.scale, [w.reward], w.method, "tune"),
        root=lambda w: f"{RUNS}/{w.scale}{w.label}/tune/{w.reward}/{w.method}",
        grid=lambda w: json.dumps(config[w.scale]["tune"]["grids"][w.method]),
        points=lambda w: group_members(w.group),
        seed=lambda w: config[w.scale]["tune"]["seed"],
        model=lambda w: model_option(w.scale),
        budget=lambda w: budget_options(w.scale),
        settings=lambda w: shared_settings(w.scale, "tune"),
    shell:
        "python -m nabla runs --scale {wildcards.scale} --protocol tune"
        " --method {wildcards.method} --reward {wildcards.reward} --seeds {params.seed}"
        " --grid '{params.grid}' --points {params.points}"
        " --config {input.config} {params.model} {params.budget} --set '{params.settings}'"
        " --root {params.root} --out {output} --threads {threads} > {log} 2>&1"


rule select_settings:
    input:
        lambda w: records(w.scale, "tune"),
    output:
        f"{TREE}/{{scale}}{{label}}/selected.yaml",
    log:
        "logs/{scale}{label}/select.log",
    conda:
        ENV
    params:
        level=lambda w: config[w.scale]["tune"]["level"],
    shell:
        "python -m nabla select --scale {wildcards.scale} --groups {input} --level {params.level}"
        " --out {output} > {log} 2>&1"
