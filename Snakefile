# ∇-GFlowNet reproduction workflow. Rules only wire files; all logic is in `python -m nabla`.
# Default: the tiny Stable-Diffusion-shaped prior, pretrained here on CPU from OpenMoji.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prior.smk"


rule all:
    input:
        "results/tiny/prior_samples.png",
    default_target: True
