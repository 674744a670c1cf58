# ∇-GFlowNet reproduction workflow. Rules only wire files; all logic is in `python -m nabla`.
# Default: the 2-D toy (exact targets) and the tiny Stable-Diffusion-shaped prior, pretrained
# here on CPU from OpenMoji; every computed result lives under runs/ until the last step
# publishes it to results/ (workflow/rules/common.smk).


from snakemake.utils import min_version
from nabla.stale_lock import clear_stale_lock

min_version("9.0")  # = pyproject's snakemake bound (a test checks it)
# a killed run's lock, where no Snakemake works here: Snakemake parses this file before it locks
clear_stale_lock(workflow.is_main_process)


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


CHECKED_AT_BUILD = validate_config(config, SCHEMA)


include: "workflow/rules/check.smk"
include: "workflow/rules/prior.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/html_report.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/bench.smk"


localrules:
    check_config,
    check_sd15_models,
    select_settings,
    aggregate,
    figures_of_a_reward,
    claims,
    readme,
    publish,
    figures,


rule all:
    default_target: True
    input:
        all_targets(),
