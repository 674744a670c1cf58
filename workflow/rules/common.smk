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


def toy2d_metric_files():
    c = config["toy2d"]
    methods = ["pretrained"] + list(c["methods"])
    return expand("results/toy2d/metrics/{reward}/{method}/seed{seed}.json",
                  reward=c["rewards"], method=methods, seed=c["seeds"])


def toy2d_run_dirs():
    c = config["toy2d"]
    return expand(f"{RUNS}/toy2d/{{reward}}/{{method}}/seed{{seed}}/done.json",
                  reward=c["rewards"], method=c["methods"], seed=c["seeds"])


def toy2d_figure_files():
    return expand("results/toy2d/figures/{kind}_{reward}.{ext}", kind=["curves", "tradeoff", "samples"],
                  reward=config["toy2d"]["rewards"], ext=["png", "pdf"])
