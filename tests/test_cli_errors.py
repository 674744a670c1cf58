"""A user's mistake on the command line is answered in a line or two, before any model loads.

Each case runs ``python -m nabla`` as a user would, with a model path that does not exist (so a
command that loaded a model first would fail differently, after seconds of loading), and checks: exit
status 1, at most two lines on stderr, no traceback, the right thing named, and no run folder left
behind. The commands run four at a time, once for the module (each spends its seconds importing).
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nabla.errors import UserError
from nabla.hub import HubModel, MissingModelsError, check_available, is_local_path
from nabla.options import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY, TOY = "config/train/tiny.yaml", "config/train/toy2d.yaml"
ABSENT = "{tmp}/absent-prior"  # never created: loading it would fail differently, and later


def train(case: str, method: str = "residual_nabla_db", reward: str = "colorfulness", model: str = ABSENT,
          config: str = TINY) -> list[str]:
    return ["train", "--config", config, "--method", method, "--reward", reward, "--model", model,
            "--out", f"{{tmp}}/{case}/run"]


#: case → the command line ({tmp}: the module's temporary folder; each case writes under {tmp}/<case>)
CASES = {
    "missing_prior": train("missing_prior"),
    "unknown_method": train("unknown_method", method="bogus_method"),
    "unknown_reward": train("unknown_reward", reward="bogus_reward"),
    "other_scale": train("other_scale", "nabla_db", "aesthetic"),
    "missing_learned_reward": train("missing_learned_reward", "nabla_db", "emoji_class", "{tmp}/prior",
                                    "{tmp}/emoji.yaml"),
    # a prior that passes the check but fails to load: a failure after the run folder was made
    "late_failure": train("late_failure", "nabla_db", "colorfulness", "{tmp}/prior"),
    "existing_folder": ["train", "--config", TINY, "--method", "bogus_method", "--reward", "colorfulness",
                        "--model", "{tmp}/prior", "--out", "{tmp}/existing"],
    "runs": ["runs", "--config", TINY, "--method", "nabla_db", "--reward", "colorfulness", "--scale", "tiny",
             "--protocol", "release", "--root", "{tmp}/runs/root", "--out", "{tmp}/runs/group.json", "--model", ABSENT],
    "sample": ["sample", "--model", ABSENT, "--out", "{tmp}/sample/grid.png"],
    "bench": ["bench", "--scale", "tiny", "--model", f"tiny={ABSENT}", "--out", "{tmp}/bench/out"],
    "exactness": ["exactness", "--config", TOY, "--rewards", "linear", "--out", "{tmp}/exactness/x.csv"],
    "smoke": ["smoke", "--method", "bogus_method", "--out", "{tmp}/smoke/out"],
    "evaluate_prior_other_scale": ["evaluate-prior", "--config", TOY, "--reward", "colorfulness",
                                   "--out", "{tmp}/evaluate_prior_other_scale/p.json"],
    "evaluate_no_run": ["evaluate", "--run", "{tmp}/evaluate_no_run/run", "--out", "{tmp}/evaluate_no_run/m.json"],
    "hub_like_local_path": ["sample", "--model", "runs/nabla-test/absent", "--out", "{tmp}/hub_like_local_path/g.png"],
}


def nabla(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nabla", *args], cwd=ROOT, capture_output=True, text=True, timeout=170,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "", "HOME": str(Path.home())})


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "prior").mkdir()
    (tmp / "prior" / "model_index.json").write_text("{}")  # a built prior as far as the check looks
    (tmp / "emoji.yaml").write_text(f"scale: tiny\nrewards:\n  emoji_class: {{model_dir: {tmp / 'reward'}}}\n")
    (tmp / "existing").mkdir()
    commands = [[part.format(tmp=tmp) for part in command] for command in CASES.values()]
    with ThreadPoolExecutor(4) as pool:
        return tmp, dict(zip(CASES, pool.map(nabla, commands)))


def user_error(answers, case: str) -> str:
    """The case's answer to a user's mistake: exit status 1, one or two lines, no traceback, and
    nothing left under its folder."""
    tmp, results = answers
    result = results[case]
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), output[-3000:]
    assert not (tmp / case).exists()
    return result.stderr.replace(str(tmp), "{tmp}")


def test_a_missing_prior_names_its_folder_and_the_command_that_builds_it(answers):
    message = user_error(answers, "missing_prior")
    assert "the tiny prior {tmp}/absent-prior does not exist" in message
    assert "python -m nabla pretrain --scale tiny --out {tmp}/absent-prior" in message
    assert "pretrain_tiny_prior" in message  # the workflow's rule that builds it
    assert "hf download" not in message and "fetch" not in message  # a local path is no hub id


def test_an_unknown_method_is_named_before_the_prior_is_looked_at(answers):
    message = user_error(answers, "unknown_method")
    assert "unknown method 'bogus_method'" in message and "residual_nabla_db" in message and "ddpo" in message
    assert "prior" not in message  # the absent prior would be named second: nothing was loaded


def test_an_unknown_reward_lists_the_known_ones_by_scale(answers):
    message = user_error(answers, "unknown_reward")
    assert "unknown reward 'bogus_reward'" in message
    assert "tiny: colorfulness, emoji_class" in message and "toy2d: linear, quadratic" in message


def test_a_reward_of_another_scale_is_named_with_its_scale(answers):
    message = user_error(answers, "other_scale")
    assert "reward 'aesthetic' belongs to the sd15 scale, not tiny" in message
    assert "CLIP" not in message and "fetch" not in message  # not a model to fetch
    message = user_error(answers, "evaluate_prior_other_scale")
    assert "reward 'colorfulness' belongs to the tiny and sd15 scales, not toy2d" in message


def test_a_missing_learned_reward_names_the_command_that_trains_it(answers):
    message = user_error(answers, "missing_learned_reward")
    assert "the emoji_class reward's classifier {tmp}/reward does not exist" in message
    assert "python -m nabla train-reward --out {tmp}/reward" in message and "train_tiny_reward" in message


@pytest.mark.parametrize("case", ["runs", "sample", "bench"])
def test_every_command_that_loads_a_prior_checks_it_first(answers, case):
    message = user_error(answers, case)
    assert "{tmp}/absent-prior does not exist" in message and "python -m nabla pretrain --scale tiny" in message


def test_the_config_default_prior_is_named_with_the_workflow_target(answers):
    if (ROOT / "runs" / "toy2d" / "prior" / "config.json").exists():
        pytest.skip("this checkout has a toy2d prior")
    message = user_error(answers, "exactness")
    assert "the toy2d prior runs/toy2d/prior does not exist" in message
    assert "python -m nabla pretrain --scale toy2d --out runs/toy2d/prior" in message
    assert "pretrain_toy2d_prior, target runs/toy2d/prior/config.json" in message


def test_other_commands_check_their_method_and_run_folder(answers):
    assert "unknown method 'bogus_method'" in user_error(answers, "smoke")
    assert "{tmp}/evaluate_no_run/run is not a run folder (no config.yaml)" in user_error(answers, "evaluate_no_run")


def test_a_run_folder_made_by_a_failed_call_is_removed_and_one_that_existed_is_kept(answers):
    tmp, results = answers
    assert results["late_failure"].returncode != 0  # a model that does not load: a bug's traceback, but
    assert not (tmp / "late_failure").exists()  # the run folder it made, still empty, is gone
    assert results["existing_folder"].returncode == 1 and (tmp / "existing").is_dir()


def test_a_local_path_is_never_named_as_a_hub_id(answers, tmp_path):
    for local in ("runs/tiny/prior", "runs/prior", "./prior", "/abs/prior", "a/b/c", "prior", str(tmp_path)):
        assert is_local_path(local), local
    for hub_id in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "openai/clip-vit-large-patch14", "THUDM/ImageReward"):
        assert not is_local_path(hub_id), hub_id
    assert HubModel("runs/tiny/prior").is_local
    with pytest.raises(MissingModelsError) as error:
        check_available([HubModel("runs/nabla-test/absent", purpose="a prior")], "config/train/tiny.yaml")
    assert "runs/nabla-test/absent (a prior)" in str(error.value) and "fetch-models" not in str(error.value)
    # on the command line: a model folder under runs/ that is not there is not sent to the hub
    message = user_error(answers, "hub_like_local_path")
    assert "the model folder runs/nabla-test/absent does not exist" in message and "pretrain" in message
    assert "hf download" not in message and "fetch" not in message


def test_config_and_model_errors_are_user_errors():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(MissingModelsError, UserError) and issubclass(MissingModelsError, FileNotFoundError)
