"""Every run a workflow config will start, resolved before any job computes, every problem named.

The schema (workflow/schemas) checks the workflow config's own keys. This goes one level deeper:
for each scale, each (method, reward) of its grid with its ``budget``, and each tuning grid point,
the run's training config is resolved (``nabla.config.run_settings``) and checked without loading
a model or reading a prompt file (:func:`nabla.config.check_run_settings`); every tuning grid has
the same number of points; the training, validation and evaluation prompts are disjoint; and the
prior the scale pretrains is a valid config of its model.
The Snakefile calls it at DAG build where it can import the package, and otherwise the workflow's
first job (``check-config``) does, before every compute job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nabla.config import PROMPT_KEYS, check_run_settings, run_settings
from nabla.data.prompt_sets import PromptSet, parse_prompts
from nabla.options import ConfigError, options_from_dict
from nabla.protocol import grid_points, grid_size

BUDGET_KEYS = ("rounds", "trajectories_per_round")
#: the schema's line that lists the registered methods (Snakemake under --use-conda cannot import
#: the package to read the registry, so the schema carries a copy, written by `nabla schema-methods`)
METHOD_ENUM_PREFIX = "    enum: ["


def write_method_enum(schema: str | Path) -> list[str]:
    """Rewrite the schema's ``$defs.method.enum`` line with the registry's methods, in its order."""
    from nabla.methods import registry

    path = Path(schema)
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  method:"))
    index = next(i for i in range(start, len(lines)) if lines[i].startswith(METHOD_ENUM_PREFIX))
    names = list(registry())
    lines[index] = f"{METHOD_ENUM_PREFIX}{', '.join(names)}]\n"
    path.write_text("".join(lines))
    return names


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _by_problem(path: str, found: dict[str, list[str]], runs: int) -> list[str]:
    """One line per problem, naming the runs it concerns unless it is every run's."""
    return [f"{path}: {problem}" + ("" if len(where) == runs else f" (in {len(where)} of {runs} runs: {'; '.join(where)})")
            for problem, where in found.items()]


def prompt_overlaps(raw: dict) -> list[str]:
    """Pairs of the three prompt splits that share prompts (not at toy2d, whose splits differ in
    their seeds). Lists are compared as sets; prompt
    sets (file specs, not read here) of the same source by their [start, stop) slices; prompt sets
    of different sources, or a list and a set, cannot share a prompt here without being read, and
    are not compared."""
    if raw.get("scale") == "toy2d":
        return []  # one unconditional prompt: the splits are kept apart by their noise seeds
    found = []
    values = {key: raw.get(key) for key in PROMPT_KEYS}
    keys = list(values)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            va, vb = values[a], values[b]
            sa, sb = parse_prompts(va), parse_prompts(vb)
            if sa is None and sb is None and va is not None and vb is not None:
                shared = sorted(set(va) & set(vb))
                if shared:
                    found.append(f"{a} and {b} share prompts: {', '.join(map(repr, shared))}")
            elif sa is not None and sb is not None and _same_source(sa, sb) and _slices_overlap(sa, sb):
                found.append(f"{a} and {b} take overlapping entries [{sa.start}:{sa.stop}] and [{sb.start}:{sb.stop}] "
                             "of the same files")
    return found


def _same_source(a: PromptSet, b: PromptSet) -> bool:
    return (a.files, a.dataset, a.url, a.column, a.group_by, a.exclude) == (b.files, b.dataset, b.url, b.column,
                                                                            b.group_by, b.exclude)


def _slices_overlap(a: PromptSet, b: PromptSet) -> bool:
    """Whether [a.start, a.stop) and [b.start, b.stop) intersect (None: open ends)."""
    low = max(a.start or 0, b.start or 0)
    high = min(float("inf") if a.stop is None else a.stop, float("inf") if b.stop is None else b.stop)
    return low < high


def prior_problems(scale: str, spec: dict[str, Any]) -> list[str]:
    """The problems of the prior the scale pretrains (its config's own checks, such as a head
    count that does not divide the attention widths), found before any job rather than after the
    VAE stage."""
    if scale == "tiny":
        from nabla.models.tiny import TinyPriorConfig as cls
    elif scale == "toy2d":
        from nabla.models.toy2d import Toy2dPretrainConfig as cls
    else:
        return []
    try:
        options_from_dict(cls, spec.get("prior"))
    except ConfigError as error:
        return [f"{scale}.prior: {p}" for p in error.problems]
    return []


def check_scale(scale: str, spec: dict[str, Any]) -> list[str]:
    """The problems of one scale's runs (as the workflow would start them)."""
    path = spec["train_config"]
    if not Path(path).exists():
        return prior_problems(scale, spec) + [f"{scale}.train_config = {path!r}: no such file"]
    overrides = {k: v for k, v in (spec.get("budget") or {}).items() if k in BUDGET_KEYS}
    found = prior_problems(scale, spec)
    for reward in spec["rewards"]:
        raw = run_settings(path, spec["methods"][0] if spec["methods"] else "residual_nabla_db", reward, 0, **overrides)
        found += [f"{path} ({reward}): {p}" for p in prompt_overlaps(raw)]
    per_run: dict[str, list[str]] = {}
    runs = 0

    def check(where: str, raw: dict) -> None:
        nonlocal runs
        runs += 1
        for p in check_run_settings(raw):
            per_run.setdefault(p, []).append(where)

    for reward in spec["rewards"]:
        for method in spec["methods"]:
            check(f"{method}, {reward}", run_settings(path, method, reward, 0, **overrides))
    tune = spec.get("tune")
    tunes = bool({"tune", "tuned"} & set(spec.get("protocols", ())))
    if tunes and not tune:
        found.append(f"{scale}.protocols tunes but {scale}.tune is missing (the grids to select from)")
    if tune and tunes:
        size = tune["runs_per_method"]
        for method in spec["methods"]:
            grid = (tune.get("grids") or {}).get(method)
            if not grid:
                found.append(f"{scale}.tune.grids: no grid for {method} (every method is tuned alike)")
                continue
            if grid_size(grid) != size:
                found.append(f"{scale}.tune.grids.{method} has {grid_size(grid)} points, runs_per_method is {size} "
                             "(every method gets the same number of tuning runs)")
            for k, point in enumerate(grid_points(grid)):
                for reward in spec["rewards"]:
                    check(f"{scale}.tune.grids.{method} point {k} {point}, {reward}",
                          run_settings(path, method, reward, tune["seed"], point, **overrides))
    found += _by_problem(path, per_run, runs)
    return _unique(found)


def check_workflow_config(config: dict[str, Any]) -> list[str]:
    """Every problem of every run the workflow config will start, in one list."""
    return _unique([p for scale in config["scales"] for p in check_scale(scale, config[scale])])
