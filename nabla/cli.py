"""`python -m nabla <command>`: every step of the workflow, runnable without Snakemake.

Exit status: 0 done; 1 failed with ``error: <what to do>`` on stderr and no traceback, for a user's
mistake (a :class:`nabla.errors.UserError`: an unknown method or reward, a reward of another scale,
a model folder not built yet, with the command that builds it, a hub model not fetched, a bad config
value), found before any model loads and before any folder is made, or a run that failed (a
non-finite loss); 2 a malformed command line (argparse). Any other failure is a bug: its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

DEFAULT_DATA_CACHE = "runs/data/openmoji32.npz"


@contextlib.contextmanager
def _removed_if_left_empty(*folders: str | Path):
    """Each of ``folders`` (children before parents) and of their parents that this call creates is
    removed again if the call fails while it is still empty: a failed call leaves no empty run folder
    behind, and no folder that existed before is touched."""
    new: list[Path] = []
    for folder in map(Path, folders):
        while not folder.exists() and folder not in new:
            new.append(folder)
            folder = folder.parent
    try:
        yield
    except BaseException:
        for folder in new:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _set_threads(threads: int | None) -> None:
    """One torch thread per core given: oversubscribed CPUs ran 5–14× slower here."""
    import torch

    n = threads or int(os.environ.get("NABLA_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def _keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of returning it to the kernel.

    By default glibc serves blocks above its mmap threshold (128 KiB, rising with use) with fresh
    pages and hands freed memory at the heap's top back to the OS, so an activation of a few MiB
    costs page faults each time it is allocated again: at the tiny UNet's sizes 9–15% of a rollout
    here (README, "Committed results", the bench). Keeping blocks up to 32 MiB in the heap and up to
    1 GiB of freed memory for reuse removes that; the numbers computed are the same. Not glibc: no-op.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def _scale_pairs(text: str) -> dict[str, str]:
    """`scale=value` pairs, comma-separated (bench's --config and --model)."""
    return dict(pair.split("=", 1) for pair in text.split(","))


def _load_overrides(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    text = Path(path).read_text()
    return (yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)) or {}


def _json(text: str | None):
    """A JSON value given on the command line (the workflow passes settings this way)."""
    return json.loads(text) if text else None


# -- commands -----------------------------------------------------------------------------------
def cmd_pretrain(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.options import options_from_dict

    overrides = {**_load_overrides(args.config), **json.loads(args.set or "{}")}
    for key in ("seed", "vae_steps", "unet_steps", "steps"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if args.scale == "tiny":
        from nabla.models.tiny import TinyPriorConfig, pretrain_tiny_prior

        overrides.pop("steps", None)
        cfg = options_from_dict(TinyPriorConfig, overrides)
        out = pretrain_tiny_prior(cfg, args.out, args.data_cache, progress=not args.no_progress)
    else:
        from nabla.models.toy2d import Toy2dPretrainConfig, pretrain_and_save_toy2d

        for key in ("vae_steps", "unet_steps"):
            overrides.pop(key, None)
        cfg = options_from_dict(Toy2dPretrainConfig, overrides)
        out = pretrain_and_save_toy2d(cfg, args.out)
    print(f"saved {args.scale} prior to {out}")


def cmd_sample(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    import torch

    from nabla.errors import UserError
    from nabla.hub import LocalFolder, check_folders
    from nabla.models.sd import LORA_FILE, SDBackend
    from nabla.preflight import check_model
    from nabla.report.grids import save_grid
    from nabla.sampling import sample_images

    if args.with_prior and not args.lora:
        raise UserError("--with-prior compares a fine-tuned model with its prior: give --lora")
    check_model(args.model)
    if args.lora:
        check_folders([LocalFolder(args.lora, LORA_FILE, "the LoRA folder", "give a finished run's final/ folder")])
    torch.manual_seed(0)
    backend = SDBackend.from_pretrained(args.model)
    if args.lora:
        backend.add_lora(rank=args.lora_rank)
        backend.load_lora(args.lora)
    labels = args.prompts
    if not args.prompts:
        from nabla.data.prompts import prompt_splits

        splits = prompt_splits()
        args.prompts = list(splits)
        labels = [f"{p} ({split})" for p, split in splits.items()]
    prompts = [p for p in args.prompts for _ in args.seeds]
    seeds = [s for _ in args.prompts for s in args.seeds]
    draw = lambda: sample_images(  # noqa: E731
        backend, prompts, seeds, num_steps=args.steps, eta=args.eta, guidance_scale=args.guidance
    )
    images = draw()
    if args.with_prior:
        # Same seeds, same noise: each prompt's prior row sits right above its fine-tuned row.
        with backend.adapter(False):
            prior = draw()
        n = len(args.seeds)
        images = torch.cat([torch.cat([prior[i : i + n], images[i : i + n]]) for i in range(0, len(images), n)])
        labels = [f"{label} {kind}" for label in labels for kind in ("prior", "tuned")]
    footer = f"DDIM {args.steps} steps, eta={args.eta}, CFG {args.guidance}; seeds {args.seeds[0]}..{args.seeds[-1]}"
    if args.credit:
        footer += "; trained on OpenMoji (CC BY-SA 4.0)"
    path = save_grid(images, labels, args.out, footer=footer)
    print(f"wrote {path} ({len(args.prompts)} prompts x {len(args.seeds)} seeds)")


def cmd_prior_quality(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    import torch

    from dataclasses import asdict

    from nabla.data import openmoji
    from nabla.metrics.features import build_features
    from nabla.models.sd import SDBackend
    from nabla.models.tiny import TinyPriorConfig
    from nabla.hub import check_folders
    from nabla.preflight import check_features, check_model
    from nabla.prior_quality import prior_quality, quality_markdown
    from nabla.rewards.learned import classifier_folder, load_emoji_classifier

    check_model(args.model)
    check_folders([classifier_folder(args.classifier, "the classifier", "train-reward", "train_tiny_reward")])
    check_features([args.features])
    torch.manual_seed(0)
    backend = SDBackend.from_pretrained(args.model)
    # the prior's own training split; a prior pretrained elsewhere: the split the defaults make
    recorded = Path(args.model) / "pretrain_config.json"
    settings = {**asdict(TinyPriorConfig()), **(json.loads(recorded.read_text()) if recorded.exists() else {})}
    train, _ = openmoji.split(openmoji.load_openmoji(args.data_cache, size=settings["image_size"]),
                              heldout_fraction=settings["heldout_fraction"], seed=settings["seed"])
    sampler = {"num_steps": args.steps, "eta": args.eta, "guidance_scale": args.guidance}
    table = prior_quality(backend, train, load_emoji_classifier(args.classifier).eval(),
                          build_features(args.features).eval(), range(args.samples), sampler)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4g")
    caption = (f"The prior's samples per prompt word ({args.samples} seeds, DDIM {args.steps} steps, eta={args.eta}, "
               f"CFG {args.guidance}) against the word's training images; nabla/prior_quality.py defines each column.")
    out.with_suffix(".md").write_text(quality_markdown(table, caption))
    print(table.to_string(index=False))


def _run_overrides(args: argparse.Namespace) -> dict:
    """TrainConfig keys set on the command line (None: not given)."""
    return {"rounds": args.rounds, "trajectories_per_round": args.trajectories, "model": args.model,
            "device": args.device}


def cmd_train(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.preflight import checked_config
    from nabla.trainer import ConfigChangedError, NonFiniteError, Trainer

    cfg = checked_config(args.config, args.method, args.reward, args.seed, **_run_overrides(args))
    try:
        with _removed_if_left_empty(args.out):
            trainer = Trainer(cfg, args.out, progress=not args.no_progress, on_config_change=args.on_config_change,
                              config_path=args.config)
            summary = trainer.run()
    except (NonFiniteError, ConfigChangedError) as error:
        raise SystemExit(f"error: {error}") from error
    print(json.dumps({k: v for k, v in summary.items() if k != "last_eval"}))


def _evaluation_options(args: argparse.Namespace) -> dict:
    return {"num_samples": args.samples, "features": args.features, "fid_features": args.fid_features}


def cmd_runs(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.preflight import check_features, checked_config
    from nabla.protocol import grid_points, selected_settings
    from nabla.runs import RunSpec, run_group
    from nabla.trainer import NonFiniteError

    # the group's runs share method, reward and models: checked once, on its first seed's config
    checked_config(args.config, args.method, args.reward, args.seeds[0], _json(args.set), **_run_overrides(args))
    if args.evaluate:
        check_features([args.features, args.fid_features])
    chosen = selected_settings(args.selected, args.reward, args.method) if args.selected else {}
    if args.grid is not None:
        points = grid_points(_json(args.grid))
        specs = [RunSpec(f"p{k}", args.seeds[0], points[k]) for k in args.points]
    else:
        specs = [RunSpec(f"seed{seed}", seed, chosen) for seed in args.seeds]
    identity = {"scale": args.scale, "protocol": args.protocol}
    try:
        with _removed_if_left_empty(*[Path(args.root) / spec.name for spec in specs], args.root):
            run_group(args.config, args.method, args.reward, specs, args.root, args.out, _run_overrides(args),
                      _json(args.set), _evaluation_options(args) if args.evaluate else None, identity)
    except NonFiniteError as error:
        raise SystemExit(f"error: {error}") from error
    print(f"wrote {args.out} ({len(specs)} runs)")


def cmd_train_reward(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.rewards.learned import train_emoji_classifier

    path = train_emoji_classifier(args.data_cache, args.out, seed=args.seed, steps=args.steps)
    print(f"saved the learned reward to {path}")


def cmd_train_features(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.metrics.features import train_feature_network

    out = train_feature_network(args.data_cache, args.out, seed=args.seed, steps=args.steps, progress=True)
    print(f"wrote the evaluation feature network to {out}")


def _short(metrics: dict) -> str:
    return json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict)) and k != "sample_strip"})


def cmd_evaluate(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.evaluation import evaluate_run
    from nabla.preflight import finished_run

    finished_run(args.run)
    print(_short(evaluate_run(args.run, args.out, **_evaluation_options(args))))


def cmd_evaluate_prior(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.evaluation import evaluate_prior
    from nabla.preflight import checked_config

    checked_config(args.config, None, args.reward, model=args.model)
    print(_short(evaluate_prior(args.config, args.reward, args.out, **_evaluation_options(args), model=args.model)))


def cmd_aggregate(args: argparse.Namespace) -> None:
    from nabla.report.aggregate import aggregate

    written = aggregate(args.scale, args.protocol, args.groups, args.priors, args.out, args.levels)
    print("wrote " + ", ".join(map(str, written)))


def cmd_select(args: argparse.Namespace) -> None:
    from nabla.report.aggregate import select_settings

    select_settings(args.scale, args.groups, args.out, args.level)
    print(f"wrote {args.out}")


def cmd_figures(args: argparse.Namespace) -> None:
    from nabla.report.figures import figures

    print("wrote " + ", ".join(map(str, figures(args.results, args.scale, rewards=args.reward))))


def cmd_redraw(args: argparse.Namespace) -> None:
    from nabla.bench import bench_figures
    from nabla.report.grids import redraw_grid

    written = [redraw_grid(record) for record in args.grid or []]
    written += [p for folder in args.bench or [] for p in bench_figures(folder, scales=args.scale)]
    print("wrote " + ", ".join(map(str, written)))


def cmd_claims(args: argparse.Namespace) -> None:
    from nabla.claims import write_claims

    print("wrote " + ", ".join(map(str, write_claims(args.results, args.scale))))


def cmd_readme(args: argparse.Namespace) -> None:
    from nabla import readme

    if args.check:
        stale = readme.stale(args.root)
        if stale:
            sys.exit("out of date (run `python -m nabla readme`): " + ", ".join(map(str, stale)))
        print("README.md, results/README.md and every set's README.md agree with results/")
        return
    changed = readme.write(args.root)
    print("wrote " + (", ".join(map(str, changed)) if changed else "nothing: every file was up to date"))


def cmd_exactness(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.exactness import write_exactness
    from nabla.preflight import checked_config

    for reward in args.rewards:
        checked_config(args.config, None, reward, model=args.model)
    written = write_exactness(args.config, args.rewards, args.priors, args.out, args.samples, model=args.model)
    print("wrote " + ", ".join(map(str, written)))


def cmd_schema_methods(args: argparse.Namespace) -> None:
    from nabla.workflow_check import write_method_enum

    print(f"{args.schema}: methods " + ", ".join(write_method_enum(args.schema)))


def cmd_options_doc(args: argparse.Namespace) -> None:
    from nabla.options_reference import write_options_reference

    print(f"wrote {write_options_reference(args.out)}")


def cmd_publish(args: argparse.Namespace) -> None:
    from nabla.publish import publish

    marker = publish(args.source, args.to, args.marker)
    print(f"published {args.source} to {args.to} ({marker})")


def cmd_check_config(args: argparse.Namespace) -> None:
    from nabla.workflow_check import check_workflow_config

    problems = check_workflow_config(_json(args.config_json))
    if problems:
        raise SystemExit("error: the workflow config has problems:\n" + "\n".join(f"  - {p}" for p in problems))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("every run's config resolves\n")
    print("every run's config resolves")


def cmd_data(args: argparse.Namespace) -> None:
    from nabla.data import openmoji, prompts

    dataset = openmoji.load_openmoji(args.data_cache)
    print(f"OpenMoji {openmoji.openmoji_version()} (CC BY-SA 4.0): {len(dataset.captions)} clean emoji cached in {args.data_cache}")
    train, heldout = openmoji.split(dataset)
    for name, words in (("train", prompts.FINETUNE_PROMPTS), ("validation", prompts.VALIDATION_PROMPTS),
                        ("evaluation", prompts.EVAL_PROMPTS), ("pretrain", prompts.TRAIN_WORDS)):
        covered = prompts.prompt_coverage(words, train.captions)
        print(f"{name:9s} " + ", ".join(f"{w}: {n}" for w, n in covered.items()))
    subset = openmoji.tiny_subset(train, prompts.TRAIN_WORDS)
    print(f"tiny training subset: {len(subset.captions)} of {len(train.captions)} training images "
          f"({len(heldout.captions)} held out)")


def cmd_bench(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    import pandas as pd

    from nabla.bench import BENCH_SCALES, run_bench, write_bench
    from nabla.preflight import check_method, checked_config

    for method in args.methods or []:
        check_method(method)
    for scale in args.scale:  # every scale's prior before the first one's runs start
        defaults = BENCH_SCALES[scale]
        checked_config((args.config or {}).get(scale, defaults["config"]), "draft", defaults["reward"],
                       model=(args.model or {}).get(scale))
    frames: dict[str, list] = {}
    for scale in args.scale:
        defaults = BENCH_SCALES[scale]
        result = run_bench(
            scale, (args.config or {}).get(scale, defaults["config"]), defaults["reward"],
            rounds=args.rounds or defaults["rounds"], eval_every=defaults["eval_every"],
            eval_samples=defaults["eval_samples"], methods=args.methods, device=args.device,
            model=(args.model or {}).get(scale),
        )
        for name, frame in result.items():
            frames.setdefault(name, []).append(frame)
    for path in write_bench({k: pd.concat(v, ignore_index=True) for k, v in frames.items()}, args.out):
        print(f"wrote {path}")


def cmd_fetch_models(args: argparse.Namespace) -> None:
    from nabla.config import config_models
    from nabla.hub import check_available, fetch
    from nabla.preflight import check_reward

    for reward in args.reward:
        check_reward(reward)
    models = config_models(args.config, args.features, args.reward or None)
    if not models:
        print(f"{args.config} needs no pretrained model from the hub")
        return
    paths = check_available(models, args.config) if args.check else fetch(models)
    for model, path in paths.items():
        print(f"{model}: {path}")


def cmd_html_tables(args: argparse.Namespace) -> None:
    from nabla.report.html_tables import write_table_pages

    for page in write_table_pages(args.sources, args.root, args.out):
        print(f"wrote {page}")


# -- parser -------------------------------------------------------------------------------------
def cmd_smoke(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    from nabla.preflight import check_method, check_model
    from nabla.smoke import run_smoke

    check_method(args.method)
    if args.model is not None:
        check_model(args.model, "sd15")
    report = run_smoke(
        shape=args.scale, out=args.out, method=args.method, model=args.model, device=args.device,
        rounds=args.rounds, trajectories=args.trajectories, num_steps=args.steps,
        microbatch_size=args.microbatch or (2 if args.scale == "sd15" else 8),
    )
    for key, value in report.items():
        print(f"{key:>22}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nabla", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("pretrain", help="pretrain a prior (tiny SD-shaped model on OpenMoji, or the 2-D toy)")
    p.add_argument("--scale", choices=["tiny", "toy2d"], default="tiny")
    p.add_argument("--out", required=True, help="output folder (diffusers format for tiny)")
    p.add_argument("--config", help="YAML/JSON file of config overrides (keys of the scale's config dataclass)")
    p.add_argument("--set", help="JSON object of config overrides, over --config's (the workflow's prior section)")
    p.add_argument("--seed", type=int)
    p.add_argument("--vae-steps", type=int, help="tiny: VAE optimisation steps")
    p.add_argument("--unet-steps", type=int, help="tiny: UNet + text encoder optimisation steps")
    p.add_argument("--steps", type=int, help="toy2d: denoiser optimisation steps")
    p.add_argument("--data-cache", default=DEFAULT_DATA_CACHE, help="OpenMoji render cache (.npz), made if absent")
    p.add_argument("--threads", type=int, help="torch threads (default: $NABLA_THREADS or all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    p = commands.add_parser("sample", help="write a grid PNG of samples: one row per prompt, one column per seed")
    p.add_argument("--model", required=True, help="diffusers folder or a model id in the local HF cache")
    p.add_argument("--prompts", nargs="+", help="default: the tiny scale's fine-tuning and held-out prompts")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--lora", help="folder holding pytorch_lora_weights.safetensors to apply")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--with-prior", action="store_true", help="with --lora: a prior row above each fine-tuned row")
    p.add_argument("--credit", action="store_true", help="add the OpenMoji licence credit under the grid")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_sample)

    def run_options(p, seeds: bool) -> None:
        """What a run needs: the method, reward, seed(s), training YAML, and overrides of it."""
        p.add_argument("--method", required=True, help="e.g. residual_nabla_db, nabla_db")
        p.add_argument("--reward", required=True, help="e.g. linear, quadratic, colorfulness, emoji_class")
        if seeds:
            p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed (or per --points)")
        else:
            p.add_argument("--seed", type=int, default=0)
        p.add_argument("--config", help="a scale's training YAML (top-level keys, methods: and rewards: sections)")
        p.add_argument("--rounds", type=int, help="override the budget: sampling rounds")
        p.add_argument("--trajectories", type=int, help="override trajectories_per_round (per process)")
        p.add_argument("--model", help="override the prior folder")
        p.add_argument("--device", help="override the device (cpu, cuda)")
        p.add_argument("--threads", type=int)

    def evaluation_options(p) -> None:
        p.add_argument("--features", help="images: the feature extractor of diversity (and of FID unless --fid-features),"
                       " NAME or NAME=MODEL: emoji=DIR (tiny, the train-features folder); dreamsim, clip, lpips, inception (sd15)")
        p.add_argument("--fid-features", help="images: the feature extractor of FID-to-prior (sd15: inception)")
        p.add_argument("--samples", type=int, default=4000, help="toy2d: samples; images: images per evaluation prompt")

    p = commands.add_parser("prior-quality", help="tiny: per prompt word, the share of the prior's samples the "
                            "classifier recognises, their diversity and their coverage of the word's training images")
    p.add_argument("--model", required=True, help="the tiny prior's folder")
    p.add_argument("--classifier", required=True, help="the learned reward's folder (python -m nabla train-reward)")
    p.add_argument("--features", required=True, help="emoji=DIR: the evaluation features (python -m nabla train-features)")
    p.add_argument("--data-cache", default=DEFAULT_DATA_CACHE)
    p.add_argument("--samples", type=int, default=32, help="samples per prompt word (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--out", required=True, help="the table's path without suffix: writes .csv and .md")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_prior_quality)

    p = commands.add_parser("train", help="fine-tune the prior with one method on one reward (resumes a run folder)")
    run_options(p, seeds=False)
    p.add_argument("--out", required=True, help="run folder (resumed from its checkpoint if present)")
    p.add_argument("--on-config-change", choices=["fail", "restart"], default="fail",
                   help="when --out holds a run of another config: refuse (default) or delete it and start over")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("runs", help="train and evaluate a group of runs (seeds, or tuning grid points) in one "
                            "process, each resumable; write the group's record (what the workflow calls)")
    run_options(p, seeds=True)
    p.add_argument("--scale", required=True, choices=["toy2d", "tiny", "sd15"])
    p.add_argument("--protocol", required=True, help="release, tuned or tune (recorded with the group)")
    p.add_argument("--root", required=True, help="folder of the group's run folders")
    p.add_argument("--out", required=True, help="the group's record (JSON)")
    p.add_argument("--set", help="JSON object of settings for every run (TrainConfig keys, else method options)")
    p.add_argument("--grid", help="tuning: JSON object of value lists (its points: nabla.protocol.grid_points)")
    p.add_argument("--points", nargs="+", type=int, default=[], help="tuning: the grid points to run (at --seeds' first)")
    p.add_argument("--selected", help="the tuned protocol: selected.yaml, whose settings for (reward, method) apply")
    p.add_argument("--evaluate", action="store_true", help="evaluate each finished run on the evaluation split")
    evaluation_options(p)
    p.set_defaults(func=cmd_runs)

    p = commands.add_parser("train-reward", help="train the tiny scale's learned reward (an OpenMoji classifier)")
    p.add_argument("--out", required=True)
    p.add_argument("--data-cache", default=DEFAULT_DATA_CACHE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_train_reward)

    p = commands.add_parser("train-features", help="train the tiny scale's evaluation feature network (diversity, FID)")
    p.add_argument("--out", required=True)
    p.add_argument("--data-cache", default=DEFAULT_DATA_CACHE)
    p.add_argument("--seed", type=int, default=1, help="differs from the learned reward's on purpose")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_train_features)

    p = commands.add_parser("evaluate", help="metrics of a finished run on the evaluation split (fixed seeds)")
    p.add_argument("--run", required=True, help="a finished run folder")
    p.add_argument("--out", required=True, help="metrics JSON")
    evaluation_options(p)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("evaluate-prior", help="the prior's metrics on a training config's evaluation split")
    p.add_argument("--config", required=True, help="a scale's training YAML")
    p.add_argument("--reward", required=True)
    p.add_argument("--model", help="override the prior folder")
    p.add_argument("--out", required=True, help="metrics JSON")
    evaluation_options(p)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_evaluate_prior)

    p = commands.add_parser("schema-methods", help="write the registered methods into the workflow schema's method "
                            "enum (after adding a method; a test keeps the two equal)")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    p.set_defaults(func=cmd_schema_methods)

    p = commands.add_parser("options-doc", help="write config/options.md, every option with its default and its "
                            "description, from the options dataclasses' docstrings (a test keeps the two equal)")
    p.add_argument("--out", default="config/options.md")
    p.set_defaults(func=cmd_options_doc)

    p = commands.add_parser("exactness", help="toy2d: the floor the N(0, I) start puts under the exact-target "
                            "methods, beside the prior sampler's (a CSV and a Markdown table)")
    p.add_argument("--config", required=True, help="the toy2d training YAML")
    p.add_argument("--rewards", nargs="+", required=True)
    p.add_argument("--priors", nargs="*", default=[], help="the prior's evaluation records (evaluate-prior)")
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--model", help="override the prior folder")
    p.add_argument("--out", required=True, help="CSV (the Markdown table beside it)")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_exactness)

    p = commands.add_parser("aggregate", help="one protocol's group records → summary, curves, end-of-budget and "
                            "matched-reward tables")
    p.add_argument("--scale", required=True, choices=["toy2d", "tiny", "sd15"])
    p.add_argument("--protocol", required=True)
    p.add_argument("--groups", nargs="+", required=True, help="group records (nabla runs)")
    p.add_argument("--priors", nargs="*", default=[], help="the prior's metrics per reward (nabla evaluate-prior)")
    p.add_argument("--levels", nargs="+", type=float, default=[0.5, 0.75], help="matched-reward fractions")
    p.add_argument("--out", required=True, help="the protocol's results folder")
    p.set_defaults(func=cmd_aggregate)

    p = commands.add_parser("select", help="the selection rule on the tuning runs → selected.yaml")
    p.add_argument("--scale", required=True, choices=["toy2d", "tiny", "sd15"])
    p.add_argument("--groups", nargs="+", required=True, help="the tuning runs' group records")
    p.add_argument("--level", type=float, required=True, help="the matched-reward fraction the rule compares at")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_select)

    p = commands.add_parser("figures", help="draw one protocol's figures from its results folder (PNG and PDF)")
    p.add_argument("--scale", required=True, choices=["toy2d", "tiny", "sd15"])
    p.add_argument("--results", required=True, help="a protocol's results folder: summary.csv, curves.csv, levels.json")
    p.add_argument("--reward", action="append", help="only this reward's figures (repeatable)")
    p.set_defaults(func=cmd_figures)

    p = commands.add_parser("redraw", help="redraw the committed figures that are no protocol's from their data alone")
    p.add_argument("--grid", action="append", help="a sample grid's record (prior_samples.json): the PNG beside it")
    p.add_argument("--bench", action="append", help="a bench folder (curves.csv, methods.csv): its reward_<scale> figures")
    p.add_argument("--scale", action="append", help="with --bench: only this scale's figure (repeatable)")
    p.set_defaults(func=cmd_redraw)

    p = commands.add_parser("claims", help="the paper's claims, seed by seed against each baseline, from one protocol's "
                            "matched.csv → claims.csv and claims.md beside it")
    p.add_argument("--scale", required=True, choices=["toy2d", "tiny", "sd15"])
    p.add_argument("--results", required=True, help="a protocol's results folder holding matched.csv")
    p.set_defaults(func=cmd_claims)

    p = commands.add_parser("readme", help="write the README's generated sections, results/README.md and each result "
                            "set's README.md from results/ and the config files")
    p.add_argument("--root", default=".", help="the repository root")
    p.add_argument("--check", action="store_true", help="write nothing; fail naming the files that are out of date")
    p.set_defaults(func=cmd_readme)

    p = commands.add_parser("publish", help="copy a finished scale's computed results into the committed results/")
    p.add_argument("--source", required=True, help="the computed results of a scale (runs/results/<scale>)")
    p.add_argument("--to", required=True, help="its committed place (results/<scale>), replaced as a whole")
    p.add_argument("--marker", required=True, help="written last: what was published, with checksums")
    p.set_defaults(func=cmd_publish)

    p = commands.add_parser("check-config", help="resolve every run's training config of a workflow config and "
                            "name every problem (before any job computes)")
    p.add_argument("--config-json", required=True, help="the workflow config as JSON (what Snakemake resolved)")
    p.add_argument("--out", help="a marker written when every config resolves")
    p.set_defaults(func=cmd_check_config)

    p = commands.add_parser("smoke", help="time a few updates at a scale's real shapes (sd15: random weights if not cached)")
    p.add_argument("--scale", choices=["sd15", "tiny-random"], default="sd15")
    p.add_argument("--method", default="residual_nabla_db")
    p.add_argument("--model", help="a diffusers folder or cached id (default: SD 1.5 if cached, else random weights)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--trajectories", type=int, default=8, help="trajectories per round")
    p.add_argument("--steps", type=int, default=50, help="sampler steps")
    p.add_argument("--microbatch", type=int, help="transitions (or trajectories) per differentiable pass "
                   "(default 2 at sd15, where 8 ran out of an 80 GB H100's memory in float32; else 8)")
    p.add_argument("--out", default="runs/smoke")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_smoke)

    p = commands.add_parser("bench", help="time and memory of every method per update, denoiser passes, "
                            "the sampler against diffusers' pipeline; writes CSV, Markdown and a figure")
    p.add_argument("--scale", nargs="+", choices=["toy2d", "tiny"], default=["toy2d", "tiny"])
    p.add_argument("--methods", nargs="+", help="default: every registered method")
    p.add_argument("--rounds", type=int, help="rounds per method (default per scale, see nabla/bench.py)")
    p.add_argument("--config", type=_scale_pairs,
                   help="scale=training YAML pairs, comma-separated (default config/train/<scale>.yaml)")
    p.add_argument("--model", type=_scale_pairs,
                   help="scale=prior folder pairs, comma-separated (default: the training YAML's model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/bench")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser("fetch-models", help="download every pretrained model a config needs (the only "
                            "command that uses the network); --check only looks them up offline")
    p.add_argument("--config", required=True, help="a workflow config (config/sd15.yaml) or a training config")
    p.add_argument("--check", action="store_true", help="do not download: fail listing every missing model")
    p.add_argument("--reward", action="append", default=[],
                   help="with a training config: only this reward's runs (repeatable; default: every reward it lists)")
    p.add_argument("--features", action="append", default=[],
                   help="also an evaluation feature extractor's models (NAME or NAME=MODEL; repeatable)")
    p.set_defaults(func=cmd_fetch_models)

    p = commands.add_parser("data", help="render OpenMoji to the cache and print how many images each tiny prompt covers")
    p.add_argument("--data-cache", default=DEFAULT_DATA_CACHE)
    p.set_defaults(func=cmd_data)

    p = commands.add_parser("html-tables", help="render committed result tables (Markdown, selected.yaml) to small "
                            "HTML pages for the Snakemake report")
    p.add_argument("sources", nargs="+", help="table files under --root")
    p.add_argument("--root", default="results", help="the folder the sources' paths are taken relative to")
    p.add_argument("--out", default="runs/report", help="<out>/<path under root>.html per source")
    p.set_defaults(func=cmd_html_tables)
    return parser


def _quiet_library_bars() -> None:
    import importlib

    for name in ("diffusers", "transformers"):
        try:
            importlib.import_module(f"{name}.utils.logging").disable_progress_bar()
        except ImportError:  # not installed: nothing of it draws a bar
            pass


def main(argv: list[str] | None = None) -> None:
    from nabla.errors import UserError

    args = build_parser().parse_args(argv)
    _keep_freed_memory()
    if not sys.stderr.isatty():
        # a job log, not a terminal: no carriage-return frames of the libraries' loading bars
        _quiet_library_bars()
    try:
        args.func(args)
    except UserError as error:  # any command: what the user can fix, without a traceback (exit status 1)
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main(sys.argv[1:])
