# Every run's training config resolves (nabla.workflow_check), so a bad key or value is named
# before any job computes. At DAG build where the Snakemake process imports the package; where it
# cannot (--use-conda), this job does it first and every compute job waits for it (common.smk).


rule check_config:
    input:
        [config[scale]["train_config"] for scale in config["scales"]],
    output:
        CHECKED,
    log:
        "logs/check_config.log",
    conda:
        ENV
    params:
        config=lambda w: json.dumps(
            {k: config[k] for k in ["scales", *config["scales"]]}
        ),
    shell:
        "python -m nabla check-config --config-json {params.config:q} --out {output} > {log} 2>&1"
