"""README.md cannot drift from the code.

- Every shell command in a ```bash block is either run by a test, named in ``COMMAND_TESTS``, or
  is CI's own command (the line after ``<!-- ci:test-command -->``, which ``.ci/run`` executes).
  A command added to the README without an entry here fails; so does an entry whose command
  left the README, and an entry whose test does not pass the command's script and flags.
- Every ```python block runs, in order, in one namespace, in a scratch folder that holds the
  synthetic Stanford Cars as ``stanford_cars_dataset`` and a trained run (``PYTHON_PLACEHOLDERS``
  says what stands in for the README's example paths).
- Every ``--flag`` the README mentions is an option of the script it is given to.

Commands are compared with their quoting and line continuations removed: ``python main.py
--n_epochs 30 \\`` + ``--batch_size 4`` is ``python main.py --n_epochs 30 --batch_size 4``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
CI_MARKER = "<!-- ci:test-command -->"

CI = "ci"
# README command (unquoted, one line) -> the test that runs it, as "tests/<file>.py::<test>", or CI.
COMMAND_TESTS: dict[str, str] = {
    "pip install -e .[test]": CI,
    "python -m pytest": CI,
    "pip install -e .": CI,
    "python main.py --demo": "tests/test_cli.py::test_demo_command_leaves_a_checkpoint_and_a_figure",
    "python main.py --list_filters --root_datasets_dir stanford_cars_dataset": "tests/test_cli.py::test_list_filters_command",
    (
        "python main.py --n_epochs 30 --batch_size 4 --checkpoints_dir path/to/dir/for/checkpoints "
        "--download_datasets true --root_datasets_dir stanford_cars_dataset --car_type Sedan --car_brand BMW "
        "--car_production_year 2012"
    ): "tests/test_train.py::test_the_seeds_command_runs_one_epoch",
    (
        "python main.py --n_epochs 30 --batch_size 4 --checkpoints_dir path/to/dir/for/checkpoints "
        "--root_datasets_dir stanford_cars_dataset --car_type Sedan --car_brand BMW --car_production_year 2012 "
        "--resume path/to/dir/for/checkpoints/last.pt"
    ): "tests/test_readme.py::test_readme_resume_command_continues_an_interrupted_run",
    (
        "torchrun --nproc_per_node 2 main.py --n_epochs 30 --batch_size 4 --checkpoints_dir path/to/dir/for/checkpoints "
        "--root_datasets_dir stanford_cars_dataset --car_type Sedan --car_brand BMW --car_production_year 2012"
    ): "tests/test_train.py::test_two_processes_with_gloo",  # as python -m torch.distributed.run
    "python visualize.py path/to/dir/for/checkpoints/best.pt --split test --n 16 --out cams.png":
        "tests/test_cli.py::test_visualize_command_draws_a_grid_with_boxes",
    "python main.py --evaluate path/to/dir/for/checkpoints/best.pt --root_datasets_dir stanford_cars_dataset --split test":
        "tests/test_cli.py::test_evaluate_command_prints_a_table_and_writes_json",
    "python benchmarks/run.py": "tests/test_benchmarks.py::test_quick_benchmark_writes_every_figure",  # in --quick mode
}

# CI commands that do what a README command does, and more: README command -> CI's command.
CI_COVERS = {"pip install -e .": "pip install -e .[test]"}  # the same package, plus the test extra

# The README's example paths in Python blocks -> what the test runs them with ({run}: the trained
# run's folder). "stanford_cars_dataset" needs no entry: the scratch folder has one.
PYTHON_PLACEHOLDERS = {
    "path/to/Your/checkpoint": "{run}/best.pt",
    "path/to/dir/for/checkpoints": "{run}",
}

# Options of programs that are not this repository's scripts.
EXTERNAL_OPTIONS = {"torchrun": {"--nproc_per_node", "--nnodes", "--standalone", "--node_rank", "--master_addr", "--master_port"}}


@dataclass
class Block:
    language: str
    text: str
    line: int  # 1-based line of the first line inside the fence


@dataclass
class Command:
    text: str  # unquoted tokens joined by single spaces
    tokens: list[str]
    line: int


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def fenced_blocks(text: str) -> list[Block]:
    blocks, language, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```\s*([\w+-]*)\s*$", line)
        if language is None and fence:
            language, start, body = fence.group(1).lower(), number + 1, []
        elif language is not None and re.match(r"^\s*```\s*$", line):
            blocks.append(Block(language, "\n".join(body), start))
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def split_commands(script: str, first_line: int) -> list[Command]:
    """Shell commands of a script: continuations joined, split at ``&&``, ``||``, ``;`` and ``|``."""
    commands: list[Command] = []
    pending, pending_line = "", first_line
    for offset, line in enumerate(script.splitlines()):
        if not pending:
            pending_line = first_line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token in {"&&", "||", ";", "|", "&"}:
                if current:
                    commands.append(Command(" ".join(current), current, pending_line))
                current = []
            else:
                current.append(token)
        pending = ""
    return commands


def readme_commands() -> list[Command]:
    return [command for block in fenced_blocks(readme_text()) if block.language in {"bash", "sh", "shell", "console"}
            for command in split_commands(block.text, block.line)]


def ci_commands() -> list[str]:
    """The commands of the line after the CI marker, read as ``.ci/run`` reads it."""
    lines = readme_text().splitlines()
    assert CI_MARKER in lines, f"README.md has no {CI_MARKER} line; .ci/run needs it"
    rest = lines[lines.index(CI_MARKER) + 1:]
    line = next(line for line in rest if not line.startswith("```"))
    return [command.text for command in split_commands(line, 0)]


def source_of_test(test_id: str) -> str:
    """The test function's source plus its module's constants and helpers (not its docstring or other tests)."""
    file_name, _, function = test_id.partition("::")
    path = REPO_ROOT / file_name
    assert path.is_file(), f"{test_id}: no file {file_name}"
    source = path.read_text(encoding="utf-8")
    parts = []
    found = False
    for node in ast.parse(source).body:
        is_test = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
        if is_test and node.name == function:
            found = True
        helper = isinstance(node, (ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if (helper and not is_test) or (is_test and node.name == function):
            parts.append(ast.get_source_segment(source, node) or "")
    assert found, f"{test_id}: {file_name} defines no {function}"
    return "\n".join(parts)


def flags(tokens: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in tokens if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", token)]


def test_every_readme_command_is_run_by_a_test_or_by_ci() -> None:
    commands = readme_commands()
    assert commands, "README.md has no ```bash blocks"
    ci = ci_commands()
    problems = []
    for command in commands:
        target = COMMAND_TESTS.get(command.text)
        where = f"README.md:{command.line}: {command.text!r}"
        if target is None:
            problems.append(f"{where} is run by no test: add a test, and an entry to COMMAND_TESTS in tests/test_readme.py")
        elif target == CI:
            if command.text not in ci and CI_COVERS.get(command.text) not in ci:
                problems.append(f"{where} is marked as CI's, but CI's command is {' && '.join(ci)!r}")
        else:
            source = source_of_test(target)
            scripts = [token for token in command.tokens if token.endswith(".py")]
            for needed in scripts + flags(command.tokens):
                if not re.search(r"(?<![\w-])" + re.escape(needed) + r"(?![\w-])", source):
                    problems.append(f"{where}: {target} never passes {needed!r}")
    assert not problems, "\n".join(problems)


def test_command_table_has_only_commands_the_readme_has() -> None:
    in_readme = {command.text for command in readme_commands()}
    stale = sorted(set(COMMAND_TESTS) - in_readme)
    assert not stale, f"COMMAND_TESTS lists commands no longer in README.md: {stale}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = ci_commands()
    assert any(command.startswith("pip install") for command in ci) and any("pytest" in command for command in ci), ci
    assert CI_MARKER in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _script_options(script: str) -> set[str] | None:
    """Long options of one of this repository's scripts, or None if it is not one."""
    if script in EXTERNAL_OPTIONS:
        return EXTERNAL_OPTIONS[script]
    if script == "main.py":
        from CAM_Stanford_Cars.main import get_args_parser
    elif script == "visualize.py":
        from CAM_Stanford_Cars.visualize import get_args_parser
    else:
        path = REPO_ROOT / script
        if not path.is_file() or path.suffix != ".py":
            return None
        # Other scripts are not imported (they may need extras): read their add_argument calls.
        return set(re.findall(r"""add_argument\(\s*['"](--[\w-]+)""", path.read_text(encoding="utf-8")))
    parser: argparse.ArgumentParser = get_args_parser()
    return {option for option in parser._option_string_actions if option.startswith("--")}


def test_every_flag_in_the_readme_exists() -> None:
    problems = []
    # In commands: the option belongs to the command's own script (or to torchrun, for its flags).
    for command in readme_commands():
        programs = [token for token in command.tokens if token.endswith(".py") or token in EXTERNAL_OPTIONS]
        options = set().union(*(_script_options(p) or set() for p in programs)) if programs else None
        if options is None:
            continue
        for flag in flags(command.tokens):
            if flag not in options:
                problems.append(f"README.md:{command.line}: {flag} is not an option of {' / '.join(programs)}")
    # In prose and code spans: some script of this repository takes it.
    known = set().union(*(_script_options(p) or set() for p in ("main.py", "visualize.py")))
    for path in REPO_ROOT.rglob("*.py"):
        if "tests" not in path.relative_to(REPO_ROOT).parts and not any(part.startswith(".") for part in path.parts):
            known |= set(re.findall(r"""add_argument\(\s*['"](--[\w-]+)""", path.read_text(encoding="utf-8", errors="replace")))
    known |= set().union(*EXTERNAL_OPTIONS.values())
    for number, line in enumerate(readme_text().splitlines(), start=1):
        for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", line):
            if flag not in known:
                problems.append(f"README.md:{number}: {flag} is an option of no script in the repository")
    assert not problems, "\n".join(sorted(set(problems)))


def test_readme_python_blocks_run(
    trained_run: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    blocks = [block for block in fenced_blocks(readme_text()) if block.language in {"python", "py"}]
    assert blocks, "README.md has no ```python blocks"
    (tmp_path / "stanford_cars_dataset").symlink_to(synthetic_root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in blocks:
        source = block.text
        for placeholder, value in PYTHON_PLACEHOLDERS.items():
            source = source.replace(placeholder, value.format(run=trained_run))
        # Compiled with blank lines in front, so a traceback names the README's own line.
        code = compile("\n" * (block.line - 1) + source, str(README), "exec")
        try:
            exec(code, namespace)
        finally:
            plt.close("all")


def _substitute(tokens: list[str], replacements: dict[str, str]) -> list[str]:
    out = []
    for token in tokens:
        for placeholder, value in replacements.items():
            if token == placeholder or token.startswith(placeholder + "/"):
                token = value + token[len(placeholder):]
        out.append(token)
    return out


def test_readme_resume_command_continues_an_interrupted_run(synthetic_root: Path, tmp_path: Path) -> None:
    """The README's --resume command, with its paths pointed at a run interrupted after one step."""
    from CAM_Stanford_Cars.train import TrainConfig, fit, read_metrics_log

    resume_commands = [command for command in readme_commands() if "--resume" in command.tokens]
    assert len(resume_commands) == 1, [command.text for command in resume_commands]
    tokens = resume_commands[0].tokens
    assert tokens[:2] == ["python", "main.py"], tokens
    run_dir = tmp_path / "run"
    # Fewer epochs, smaller images, from scratch, quietly: the values the first run starts with too.
    speed = ["--n_epochs", "2", "--image_size", "64", "--pretrained", "false", "--device", "cpu", "--num_workers", "0",
             "--progress", "false"]
    first = fit(TrainConfig(
        root=str(synthetic_root), checkpoints_dir=str(run_dir), car_type="Sedan", car_brand="BMW", car_production_year=2012,
        n_epochs=2, batch_size=4, image_size=64, pretrained=False, device="cpu", num_workers=0, progress=False,
    ), stop_after_steps=1)
    assert first.interrupted and read_metrics_log(run_dir / "metrics.jsonl") == []  # stopped inside epoch 1
    args = _substitute(tokens[2:], {"path/to/dir/for/checkpoints": str(run_dir), "stanford_cars_dataset": str(synthetic_root)})
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *args, *speed], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [record["epoch"] for record in read_metrics_log(run_dir / "metrics.jsonl")] == [1, 2]
    assert "epoch 2/2" in result.stdout + result.stderr
