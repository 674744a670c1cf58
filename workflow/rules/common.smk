# Shared paths and helpers of the rules.
import os

RUNS = "runs"  # heavy per-run outputs (models, checkpoints): git-ignored
ENV = "../../environment.yml"  # relative to this rules folder


wildcard_constraints:
    scale="toy2d|tiny|sd15",
    seed=r"\d+",


def prior_dir(scale):
    return f"{RUNS}/{scale}/prior"


def folder_of(name):
    """A params function: the folder holding the rule's output (or input) file `name`."""
    return lambda wildcards, input, output: os.path.dirname(output.get(name) or input.get(name))


def prior_marker(scale):
    """The file whose existence means the scale's prior is pretrained."""
    return f"{prior_dir(scale)}/" + ("config.json" if scale == "toy2d" else "model_index.json")


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
    return f"--features {os.path.dirname(FEATURES)} --samples {e['samples']}"


def toy2d_figure_files():
    return expand("results/toy2d/figures/{kind}_{reward}.{ext}", kind=["curves", "tradeoff", "samples"],
                  reward=config["toy2d"]["rewards"], ext=["png", "pdf"])
