# Shared paths and helpers of the rules, and the config's validation before any job is planned.
#
# Layout: everything the DAG computes lives under the git-ignored runs/ tree:
#   runs/<scale>/...                     the scale's prior and (tiny) its reward and feature networks;
#                                        a prior set apart from the default in runs/<scale>/prior-...
#   runs/<name>/<protocol>/...           run folders (checkpoints, logs, weights)
#   runs/records/<name>/<protocol>/...   one record per job (its runs' curves and final metrics)
#   runs/results/<name>/...              the result set's tables, figures and selection
#   runs/published/<name>.json           the last step: runs/results/<name> copied to results/<name>
# <name> is the scale's result set: its config key `name`, the scale itself or the scale and a
# label (`tiny-full`). A config whose runs or selection differ from the default's names its own,
# and overwrites nothing of it. Rules match it as `{scale}{label}`, so that the default's paths,
# commands and params, and with them every recorded job, stay as they were.
# The committed results/ are never a rule's output, so a missing or unfinished run always makes
# the publish step out of date, and `snakemake figures` redraws results/ from results/ alone.
import functools
import json
import math
import os
import re

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCALES = ("toy2d", "tiny", "sd15")
RUNS = "runs"
TREE = f"{RUNS}/results"  # what the DAG computes; published to results/


def ENV(wildcards):
    """Every rule's conda env (--use-conda; relative to this rules folder): the CUDA stack where a
    scale of the config trains with `device: cuda` (config/sd15.yaml's), else the CPU pins.
    """
    devices = {
        (yaml.safe_load(open(config[s]["train_config"])) or {}).get("device")
        for s in config["scales"]
    }
    return "../../environment-gpu.yml" if "cuda" in devices else "../../environment.yml"


CHECKED = f"{RUNS}/checked/config.ok"  # every run's config resolves (check_config)
SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")


def validate_config(config, schema_path):
    """Every schema violation of the config at once, each with its path; then the schema's defaults.
    Where the Snakemake process can import the package, every run's training config is resolved
    too (nabla.workflow_check), so `snakemake -n` already names a bad training config, and this
    returns True; elsewhere (--use-conda) the check_config job does it before any compute job.
    """
    schema = yaml.safe_load(open(schema_path))
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config),
        key=lambda e: list(e.path),
    )
    if errors:
        lines = [
            f"  - {'.'.join(map(str, e.path)) or '(top level)'}: {e.message}"
            for e in errors
        ]
        raise WorkflowError("the workflow config has problems:\n" + "\n".join(lines))
    validate(config, schema_path)  # fills in the defaults
    try:
        from nabla.workflow_check import check_workflow_config
    except ImportError:
        return False
    problems = check_workflow_config(config)
    if problems:
        raise WorkflowError(
            "the runs' training configs have problems:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return True


def name_of(scale):
    """The scale's result set (its config key `name`; left out, the scale)."""
    return (config.get(scale) or {}).get("name") or scale


def label_of(scale):
    """The result set's name after the scale: '' or '-<label>'."""
    return name_of(scale)[len(scale) :]


def checked():
    """A compute job's input that orders it after the config check: none where the check ran at DAG
    build; else the check_config job's marker (ancient: a re-check after an edit reruns nothing).
    (A Snakemake quirk: while the marker is being made, the jobs after it are not checked for their
    own reasons to rerun; under --use-conda the command after an edit may then run the check alone.)
    """
    return [] if CHECKED_AT_BUILD else [ancient(CHECKED)]


wildcard_constraints:
    scale="|".join(SCALES),
    label="(?:{})".format("|".join(sorted({re.escape(label_of(s)) for s in SCALES}))),
    tree="runs/results|results",


def folder_of(name):
    """A params function: the folder holding the rule's output (or input) file `name`."""
    return lambda wildcards, input, output: os.path.dirname(
        output.get(name) or input.get(name)
    )


def all_cores(cluster_threads=8):
    """Threads of a job that uses every core: all local cores, or `cluster_threads` under a
    cluster executor, where snakemake has no core count (workflow.cores raises there).
    """
    try:
        return workflow.cores
    except WorkflowError:
        return cluster_threads


def gpus(wildcards):
    """A training, sampling or evaluation job's GPUs: one at sd15, none at the CPU scales."""
    return int(wildcards.scale == "sd15")


# -- priors and models ----------------------------------------------------------------------------
@functools.cache
def prior_defaults(scale):
    """The schema's default prior of a scale (toy2d, tiny)."""
    with open(SCHEMA) as file:
        prior = yaml.safe_load(file)["properties"][scale]["properties"]["prior"]
    return {k: v["default"] for k, v in prior["properties"].items()}


def prior_dir(scale):
    """runs/<scale>/prior for the schema's default prior; a prior set otherwise (its own seed,
    budget or architecture) is named by what differs, runs/tiny/prior-unet_attention_heads2, so
    that result sets with the same prior share it and none overwrites another's."""
    prior = (config.get(scale) or {}).get("prior") or {}
    own = {k: v for k, v in sorted(prior.items()) if v != prior_defaults(scale)[k]}
    return f"{RUNS}/{scale}/prior" + "".join(f"-{k}{v}" for k, v in own.items())


def prior_marker(scale):
    """The file whose existence means the scale's prior is ready: pretrained here, or (sd15)
    every model the runs load found in the local Hugging Face cache."""
    if scale == "sd15":
        return f"{RUNS}/sd15/models_available.txt"
    return f"{prior_dir(scale)}/" + (
        "config.json" if scale == "toy2d" else "model_index.json"
    )


REWARD_MODEL = f"{RUNS}/tiny/reward/emoji_classifier.safetensors"  # the learned reward (emoji_class)
FEATURES = (
    f"{RUNS}/tiny/features/emoji_classifier.safetensors"  # the tiny evaluation network
)


def model_option(scale):
    """The run command's --model: the prior pretrained here; sd15's comes from its train config."""
    return "" if scale == "sd15" else f"--model {prior_dir(scale)}"


def run_models(wildcards):
    """What a run loads besides the prior: the learned reward, and the tiny evaluation network."""
    return ([REWARD_MODEL] if wildcards.reward == "emoji_class" else []) + (
        [FEATURES] if wildcards.scale == "tiny" else []
    )


# -- what a job reads of its training config ------------------------------------------------------
def train_config_input(scale):
    """A job's training config as an input: `ancient`, so that its mtime alone (a comment, another
    method's setting) reruns nothing; `train_settings_read` is the param that does."""
    return ancient(config[scale]["train_config"])


def train_settings_read(scale, rewards, method=None, protocol="release"):
    """The part of the scale's training config a job reads, as canonical JSON (a rule param, so that
    Snakemake's params trigger reruns exactly the jobs an edit changes): the shared keys, and of
    `rewards`, `per_reward` and `methods` (nabla.config.run_settings) the entries of the job's
    rewards and method (None: no method's, as the prior is evaluated). A tuning run, and a run of
    the tuned protocol, sets its tuning grid's keys itself, over the method's entries: their
    values there (the release protocol's) are not read, so editing them reruns neither.
    """
    with open(config[scale]["train_config"]) as file:
        raw = yaml.safe_load(file) or {}
    chosen = grid_keys(scale, protocol, method)

    def method_entry(entries):
        entry = (entries or {}).get(method)
        return {k: v for k, v in entry.items() if k not in chosen} if entry else entry

    methods = raw.pop("methods", None)
    options = raw.pop("rewards", None) or {}
    per_reward = raw.pop("per_reward", None) or {}
    for name in rewards:
        entry = dict(per_reward.get(name) or {})
        reward_methods = entry.pop("methods", None)
        raw[f"reward {name}"] = {
            "options": options.get(name),
            "per_reward": entry,
            **({"method": method_entry(reward_methods)} if method else {}),
        }
    if method:
        raw[f"method {method}"] = method_entry(methods)
    return json.dumps(raw, sort_keys=True)


def grid_keys(scale, protocol, method):
    """The settings a run of `protocol` takes from the tuning grid (tune: its point; tuned: the
    point selected), not from the training config."""
    if protocol not in ("tune", "tuned") or method is None:
        return set()
    return set(config[scale]["tune"]["grids"][method])


# -- the grid of runs, in jobs --------------------------------------------------------------------
def budget_options(scale):
    """The run command's overrides of the scale's train_config (its `budget`)."""
    flags = {"rounds": "--rounds", "trajectories_per_round": "--trajectories"}
    return " ".join(
        f"{flags[k]} {v}" for k, v in config[scale].get("budget", {}).items()
    )


def chunks(items, size):
    """`items` in jobs of `size` (0: all in one job)."""
    size = size or len(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def groups(scale, protocol):
    """A job's runs as a wildcard: `s0-1-2` (seeds) or `p0-1-2-3` (tuning grid points)."""
    c = config[scale]
    if protocol == "tune":
        return [
            "p" + "-".join(map(str, g))
            for g in chunks(
                list(range(c["tune"]["runs_per_method"])), c["runs_per_job"]
            )
        ]
    return [
        "s" + "-".join(map(str, g)) for g in chunks(list(c["seeds"]), c["runs_per_job"])
    ]


def group_members(group):
    return group[1:].replace("-", " ")


def records(scale, protocol, reward=None):
    c = config[scale]
    return expand(
        f"{RUNS}/records/{name_of(scale)}/{protocol}/{{reward}}/{{method}}/{{group}}.json",
        reward=[reward] if reward else c["rewards"],
        method=c["methods"],
        group=groups(scale, protocol),
    )


def prior_records(scale):
    return expand(
        f"{RUNS}/records/{name_of(scale)}/prior/{{reward}}.json",
        reward=config[scale]["rewards"],
    )


def shared_settings(scale, protocol):
    """Settings of every run that the workflow decides (JSON for `nabla runs --set`): the tiny
    evaluation network of the dense diversity and FID; tuning runs measure the validation split only.
    """
    settings = {}
    if scale == "tiny":
        settings["eval_features"] = f"emoji={os.path.dirname(FEATURES)}"
    if scale == "sd15":
        settings.update(
            eval_features=config[scale]["evaluation"]["features"],
            eval_fid_features=config[scale]["evaluation"]["fid_features"],
        )
    if protocol == "tune":
        settings["eval_splits"] = ["validation"]
    return json.dumps(settings)


def evaluation_options(scale):
    e = config[scale]["evaluation"]
    if scale == "toy2d":
        return f"--samples {e['samples']}"
    if scale == "tiny":
        return f"--features emoji={os.path.dirname(FEATURES)} --samples {e['samples']}"
    return f"--features {e['features']} --fid-features {e['fid_features']} --samples {e['samples']}"


# -- results --------------------------------------------------------------------------------------
PROTOCOL_FILES = (
    "summary.csv",
    "curves.csv",
    "levels.json",
    "matched.csv",
    "matched.md",
    "matched.tex",
    "table.md",
    "table.tex",
    "samples.json",
)
FIGURE_KINDS = ("curves", "frontier", "tradeoff", "samples")


def main_protocols(scale):
    return [p for p in config[scale]["protocols"] if p != "tune"]


def tunes(scale):
    """Whether the scale's tuning runs and selection are computed (`tune`, or `tuned`, which uses them)."""
    return bool({"tune", "tuned"} & set(config[scale]["protocols"]))


def figure_files(tree, scale, protocol):
    return expand(
        f"{tree}/{name_of(scale)}/{protocol}/figures/{{kind}}_{{reward}}.{{ext}}",
        kind=FIGURE_KINDS,
        reward=config[scale]["rewards"],
        ext=["png", "pdf"],
    )


def result_sets(root="results"):
    """The result sets present under `root`: its folders named a scale or a scale and a label."""
    if not os.path.isdir(root):
        return []
    return sorted(
        name
        for name in os.listdir(root)
        if os.path.isdir(os.path.join(root, name))
        and any(name == s or name.startswith(f"{s}-") for s in SCALES)
    )


def column_values(path, column):
    """The distinct values of a CSV file's column, sorted."""
    import csv

    with open(path, newline="") as file:
        return sorted({row[column] for row in csv.DictReader(file)})


def redrawn_figures(root="results"):
    """Every figure `figures` redraws from the committed results alone, found from the folders
    present (any set, whatever config made it; none from runs/): each protocol folder's (release,
    tuned) FIGURE_KINDS for every reward of its curves.csv; a set's sample grid (prior_samples.png)
    beside its record; the bench's reward figures, one a scale of its curves.csv.
    """
    files = []
    for name in result_sets(root):
        for protocol in ("release", "tuned"):
            folder = f"{root}/{name}/{protocol}"
            needs = ("summary.csv", "curves.csv", "levels.json", "samples.json")
            if all(os.path.exists(f"{folder}/{f}") for f in needs):
                files += expand(
                    f"{folder}/figures/{{kind}}_{{reward}}.{{ext}}",
                    kind=FIGURE_KINDS,
                    reward=column_values(f"{folder}/curves.csv", "reward"),
                    ext=["png", "pdf"],
                )
        if os.path.exists(f"{root}/{name}/prior_samples.json"):
            files.append(f"{root}/{name}/prior_samples.png")
    if os.path.exists(f"{root}/bench/curves.csv"):
        files += expand(
            f"{root}/bench/reward_{{scale}}.{{ext}}",
            scale=column_values(f"{root}/bench/curves.csv", "scale"),
            ext=["png", "pdf"],
        )
    return files


def claims_files(tree, scale, protocol):
    return [f"{tree}/{name_of(scale)}/{protocol}/claims.{ext}" for ext in ("csv", "md")]


def readme_inputs(source):
    """After `all`, each set once published (one marker a set, so that sets of other configs do not
    rerun each other's); for `figures`, the claims of every committed set's protocols (as
    `redrawn_figures`, found from the folders present)."""
    if source != "results":  # a set's name: after it is published
        return [f"{RUNS}/published/{source}.json"]
    return [
        f"results/{name}/{protocol}/claims.{ext}"
        for name in result_sets("results")
        for protocol in ("release", "tuned")
        if os.path.exists(f"results/{name}/{protocol}/matched.csv")
        for ext in ("csv", "md")
    ]


def scale_results(scale):
    """Everything the DAG computes into the scale's runs/results/<name> (what publish copies)."""
    tree = f"{TREE}/{name_of(scale)}"
    files = [
        f"{tree}/{p}/{file}" for p in main_protocols(scale) for file in PROTOCOL_FILES
    ]
    files += [f for p in main_protocols(scale) for f in figure_files(TREE, scale, p)]
    files += [f for p in main_protocols(scale) for f in claims_files(TREE, scale, p)]
    if tunes(scale):
        files += [f"{tree}/selected.yaml"] + [
            f"{tree}/tune/{file}" for file in PROTOCOL_FILES
        ]
    if scale == "tiny":
        files += [f"{tree}/prior_samples.png", f"{tree}/prior_samples.json"]
        files += [f"{tree}/prior_quality.{ext}" for ext in ("csv", "md")]
    if scale == "toy2d":
        files += [f"{tree}/exactness.{ext}" for ext in ("csv", "md")]
    return files


def all_targets():
    """What `all` builds: each scale of config["scales"] computed and published."""
    return [f"{RUNS}/published/{name_of(scale)}.json" for scale in config["scales"]] + [
        f"{RUNS}/readme/{name_of(scale)}.txt" for scale in config["scales"]
    ]
