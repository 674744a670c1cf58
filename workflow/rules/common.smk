# Shared paths and helpers of the rules.

RUNS = "runs"  # heavy per-run outputs (models, checkpoints): git-ignored
ENV = "../../environment.yml"  # relative to this rules folder


def prior_dir(scale):
    return f"{RUNS}/{scale}/prior"
