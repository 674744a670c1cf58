# Shared paths and helpers of the rules.
import os

from snakemake.exceptions import WorkflowError

RUNS = "runs"  # heavy per-run outputs (models, checkpoints): git-ignored
ENV = "../../environment.yml"  # relative to this rules folder


wildcard_constraints:
    scale="toy2d|tiny|sd15",
    seed=r"\d+",


def all_cores(cluster_threads=8):
    """Threads of a job that uses every core: all local cores, or `cluster_threads` under a
    cluster executor, where snakemake has no core count (workflow.cores raises there)."""
    try:
        return workflow.cores
    except WorkflowError:
        return cluster_threads


def prior_dir(scale):
    return f"{RUNS}/{scale}/prior"


def folder_of(name):
    """A params function: the folder holding the rule's output (or input) file `name`."""
    return lambda wildcards, input, output: os.path.dirname(output.get(name) or input.get(name))


def prior_marker(scale):
    """The file whose existence means the scale's prior is ready: pretrained here, or (sd15)
    every model the runs load found in the local Hugging Face cache."""
    if scale == "sd15":
        return f"{RUNS}/sd15/models_available.txt"
    return f"{prior_dir(scale)}/" + ("config.json" if scale == "toy2d" else "model_index.json")


def model_option(scale):
    """The train command's --model: the prior pretrained here; sd15's comes from its train config."""
    return "" if scale == "sd15" else f"--model {prior_dir(scale)}"


def gpus(wildcards):
    """A training, sampling or evaluation job's GPUs: one at sd15, none at the CPU scales."""
    return int(wildcards.scale == "sd15")


def budget_options(scale):
    """The train command's overrides of the scale's train_config (its `budget`)."""
    flags = {"updates": "--updates", "trajectories_per_round": "--trajectories"}
    return " ".join(f"{flags[k]} {v}" for k, v in config[scale].get("budget", {}).items())


REWARD_MODEL = f"{RUNS}/tiny/reward/emoji_classifier.safetensors"  # the learned reward (emoji_class)
FEATURES = f"{RUNS}/tiny/features/emoji_classifier.safetensors"  # the tiny evaluation network


def metric_files(scale):
    """Every run's metrics file of a scale, plus the prior's reference row per (reward, seed)."""
    c = config[scale]
    methods = ["pretrained"] + list(c["methods"])
    return expand(f"results/{scale}/metrics/{{reward}}/{{method}}/seed{{seed}}.json",
                  reward=c["rewards"], method=methods, seed=c["seeds"])


def run_dones(scale):
    c = config[scale]
    return expand(f"{RUNS}/{scale}/{{reward}}/{{method}}/seed{{seed}}/done.json",
                  reward=c["rewards"], method=c["methods"], seed=c["seeds"])


def evaluation_models(scale):
    """Models an evaluation reads besides the run: the feature network at tiny."""
    return [FEATURES] if scale == "tiny" else []


def evaluation_options(scale):
    e = config[scale]["evaluation"]
    if scale == "toy2d":
        return f"--beta {e['beta']} --samples {e['samples']}"
    if scale == "tiny":
        return f"--features emoji={os.path.dirname(FEATURES)} --samples {e['samples']}"
    return f"--features {e['features']} --fid-features {e['fid_features']} --samples {e['samples']}"


def image_figure_files(scale):
    """An image scale's figures; scale "{scale}" (a wildcard) gives the patterns of one rule for all."""
    kinds = ["curves", "tradeoff_diversity", "tradeoff_fid_to_prior", "samples"]
    rewards = ["{reward}"] if scale == "{scale}" else config[scale]["rewards"]
    return expand(f"results/{scale}/figures/{{kind}}_{{reward}}.{{ext}}", kind=kinds, reward=rewards,
                  ext=["png", "pdf"], allow_missing=True)


def toy2d_figure_files():
    return expand("results/toy2d/figures/{kind}_{reward}.{ext}", kind=["curves", "tradeoff", "samples"],
                  reward=config["toy2d"]["rewards"], ext=["png", "pdf"])


def all_targets():
    """What `all` builds for the scales in config["scales"] (rules are defined by the time it runs)."""
    scales, targets = config["scales"], []
    if "toy2d" in scales:
        targets += [rules.toy2d_tables.output, rules.toy2d_figures.output]
    if "tiny" in scales:
        targets.append("results/tiny/prior_samples.png")
        if config["tiny"]["methods"]:  # [] leaves the tiny comparison out
            targets += ["results/tiny/table.md"] + image_figure_files("tiny")
    if "sd15" in scales:
        targets += ["results/sd15/table.md"] + image_figure_files("sd15")
    return targets
