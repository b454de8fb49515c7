"""The `scotd` CLI: every command explains itself, and `data show` prints what the student and teacher see."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from scotd_harness.cli import COMMANDS, cli


def test_top_level_help_lists_available_commands_without_importing_torch():
    code = "import sys; from scotd_harness.cli import cli; cli(['--help'], standalone_mode=False); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in COMMANDS) and out.strip().endswith("False")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_available_command_has_help(name):
    assert cli.get_command(None, name) is not None, f"`scotd {name}` is missing"
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def test_data_show_prints_student_and_teacher_views(data_dir):
    result = CliRunner().invoke(cli, ["data", "show", "csqa", "-n", "2", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.count("Answer Choices:") >= 2 + 7  # two student views plus the teacher's exemplars
    assert "A: So the answer is: (a)" in result.output  # the first dev question's gold, in the student target
    assert "teacher prompt (csqa-" in result.output


def test_data_show_bad_task_and_bad_data_dir_are_clean_errors(tmp_path):
    result = CliRunner().invoke(cli, ["data", "show", "gsm8k", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "unknown task 'gsm8k'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["data", "show", "csqa", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "dev_rand_split.jsonl" in result.output


def test_model_path_command():
    result = CliRunner().invoke(cli, ["model", "path"])
    assert result.exit_code == 0 and "smollm2-135m-instruct" in result.output
