"""The project's own files agree with each other: licence and citation, the conda envs and the pins,
Snakemake's minimum version, the catalog file; and the backends import without transformers'
torchvision notes."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
AUTHORS = ["Liu", "Xiao", "Liu", "Bengio", "Zhang"]
TITLE = "Efficient Diversity-Preserving Diffusion Alignment via Gradient-Informed GFlowNets"


def requirements() -> dict[str, Requirement]:
    """pyproject's bounds, dependencies and every extra, by package name."""
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    reqs += [Requirement(r) for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra]
    return {r.name.lower(): r for r in reqs}


def pins(lines) -> dict[str, str]:
    """``name==version`` lines (a pin file, or an env file's pip section), pip options skipped."""
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("--"):
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            found[name.lower()] = version
    return found


def env_file(name: str) -> tuple[list, list[str]]:
    """An env file's conda dependencies and its pip section."""
    deps = yaml.safe_load((ROOT / name).read_text())["dependencies"]
    return [d for d in deps if not isinstance(d, dict)], next(d["pip"] for d in deps if isinstance(d, dict))


# -- B: licence and citation -----------------------------------------------------------------------
def test_the_licence_is_the_mit_licence_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the nabla-gfn reproduction authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_citation_cff_cites_this_software_and_prefers_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors"):  # CFF 1.2.0's required keys
        assert cff.get(key), key
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == PYPROJECT["project"]["version"] and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    cited = [paper] + [r for r in cff["references"] if r["title"] == TITLE]
    assert len(cited) == 2
    for entry in cited:
        assert entry["type"] == "conference-paper" and entry["title"] == TITLE and entry["year"] == 2025
        assert [a["family-names"] for a in entry["authors"]] == AUTHORS
        assert [a["given-names"] for a in entry["authors"]] == ["Zhen", "Tim Z.", "Weiyang", "Yoshua", "Dinghuai"]
        assert "ICLR" in entry["collection-title"] and entry["url"].endswith("2412.07775")
    assert {"type": "other", "value": "arXiv:2412.07775"}.items() <= paper["identifiers"][0].items()


# -- C: the conda environments ---------------------------------------------------------------------
def test_the_gpu_env_is_the_cpu_pins_with_the_cuda_torch_and_the_sd_extra():
    cpu_deps, cpu_pip = env_file("environment.yml")
    gpu_deps, gpu_pip = env_file("environment-gpu.yml")
    assert cpu_deps == gpu_deps == ["python=3.11", "pip"]
    for section in (cpu_pip, gpu_pip):
        assert not [p for p in section if p.startswith(("-e", "-r", ".", "/"))], "no paths in a pip section"
    # the CPU env gets torch's CPU build from its index; the GPU env PyPI's (CUDA) build of the same version
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu_pip
    assert not [p for p in gpu_pip if p.startswith("--")]
    cpu, gpu = pins(cpu_pip), pins(gpu_pip)
    assert cpu == pins((ROOT / "requirements-cpu.txt").read_text().splitlines())
    assert {k: v for k, v in gpu.items() if k not in cpu} == {"torchvision": "0.28.0", "lpips": "0.1.4"}
    assert {k: v for k, v in gpu.items() if k in cpu} == cpu
    # torchvision 0.N pairs with torch 2.(N-15) (0.28 with 2.13)
    assert Version(gpu["torchvision"]).minor == Version(gpu["torch"]).minor + 15


@pytest.mark.parametrize("name", ["environment.yml", "environment-gpu.yml", "requirements-cpu.txt"])
def test_every_pin_is_within_pyprojects_bounds(name):
    lines = env_file(name)[1] if name.endswith(".yml") else (ROOT / name).read_text().splitlines()
    bounds = requirements()
    checked = {n: v for n, v in pins(lines).items() if n in bounds}
    assert {"torch", "snakemake", "diffusers", "tensorboard"} <= set(checked)
    assert "lpips" in checked or name != "environment-gpu.yml"
    for package, version in checked.items():
        assert bounds[package].specifier.contains(version, prereleases=True), f"{package}=={version}: {bounds[package]}"


def test_the_rules_envs_and_the_catalog_name_files_that_exist():
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    named = re.findall(r'"\.\./\.\./(environment[^"]*)"', common)  # ENV, relative to the rules folder
    assert sorted(named) == ["environment-gpu.yml", "environment.yml"]
    assert all((ROOT / n).exists() for n in named)
    catalog = (ROOT / ".snakemake-workflow-catalog.yml").read_text()
    assert yaml.safe_load(catalog)["usage"]["software-stack-deployment"]["conda"] is True
    assert all(n in catalog for n in named)
    for path in re.findall(r"workflow/[\w/]+(?:\.\w+)?", catalog):
        assert (ROOT / path).exists(), f"the catalog names {path}, which does not exist"


FAKE_CONDA = """#!/bin/sh
case "$*" in
  *"info --json"*) echo '{"conda_prefix": "/nonexistent", "root_prefix": "/nonexistent", "envs_dirs": [], "pkgs_dirs": [], "platform": "linux-64", "conda_version": "24.11.0", "channels": []}';;
  *"--version"*) echo "conda 24.11.0";;
  *"channel_priority"*) echo '{"get": {"channel_priority": "strict"}}';;
  *) echo '{}';;
esac
"""


@pytest.mark.slow
@pytest.mark.parametrize("configfile, env", [("config/config.yaml", "environment.yml"),
                                             ("config/sd15.yaml", "environment-gpu.yml")])
def test_use_conda_gives_the_gpu_env_where_a_scale_trains_on_cuda(tmp_path, configfile, env):
    """`--list-conda-envs` (conda is not installable here: a stand-in answers `conda info`)."""
    (tmp_path / "conda").write_text(FAKE_CONDA)
    (tmp_path / "conda").chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "snakemake", "--list-conda-envs", "--nolock", "--cores", "1",
                             "--configfile", configfile], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    listed = [line.split("\t")[0] for line in result.stdout.splitlines() if line.startswith("environment")]
    assert listed[1:] == [env]  # after the header: one env, the right one


# -- D: Snakemake's minimum version ----------------------------------------------------------------
def test_the_snakefile_and_pyproject_ask_the_same_snakemake():
    import snakemake

    minimum = re.search(r'^min_version\("([\d.]+)"\)', (ROOT / "Snakefile").read_text(), re.M)[1]
    bound = requirements()["snakemake"].specifier
    assert str(bound) == f">={minimum}"
    assert minimum == "9.0" and Version(snakemake.__version__) >= Version(minimum)


# -- E: no torchvision notes -----------------------------------------------------------------------
def test_the_backends_import_without_transformers_torchvision_notes():
    code = ("import logging; import nabla.models.tiny, nabla.models.sd; "
            "logging.getLogger('transformers.utils.import_utils').warning('`OtherImageProcessor` requires "
            "torchvision (not installed)')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CLIPImageProcessor" not in result.stderr and "SiglipImageProcessor" not in result.stderr
    assert "`OtherImageProcessor` requires torchvision" in result.stderr  # only those two notes are dropped
