"""The set-up files agree with each other and the CLI exposes its commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nabla.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("--"):  # pip options (--extra-index-url) pin nothing
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line).groups()
            pins[name.lower()] = version
    return pins


def test_environment_yml_pins_equal_the_cpu_pin_file():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert not [p for p in pip_section if p.startswith(("-e", "-r", ".", "/"))], "no paths in pip section"
    assert _pins(pip_section) == _pins((ROOT / "requirements-cpu.txt").read_text().splitlines())


def test_pin_file_pins_the_cpu_torch():
    assert _pins((ROOT / "requirements-cpu.txt").read_text().splitlines())["torch"] == "2.13.0"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "nabla", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert name in out.stdout


@pytest.mark.parametrize("command", list(build_parser()._subparsers._group_actions[0].choices))
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
