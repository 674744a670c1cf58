# ∇-GFlowNet reproduction workflow. Rules only wire files; all logic is in `python -m nabla`.
# Default: the tiny Stable-Diffusion-shaped prior, pretrained here on CPU from OpenMoji.


from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/prior.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"

localrules:
    check_sd15_models,
    toy2d_tables,
    image_tables,
    curves,
    toy2d_figures,
    image_figures,
    figures,


rule all:
    input:
        all_targets(),
    default_target: True
