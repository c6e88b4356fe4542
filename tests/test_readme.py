"""README.md and docs/*.md cannot drift from the code.

- Every shell command in a ```bash block is either run by a test, named in ``COMMAND_TESTS``, or
  is CI's own command (the README line after ``<!-- ci:test-command -->``, which ``.ci/run``
  executes). A command added to a document without an entry here fails; so does an entry whose
  command left the documents, and an entry whose test does not pass the command's script and flags.
- Every ```python block runs, in order, in one namespace per document, in a scratch folder that
  holds the synthetic Stanford Cars as ``stanford_cars_dataset`` and a trained run
  (``PYTHON_PLACEHOLDERS`` says what stands in for the example paths).
- Every ``--flag`` a document mentions is an option of the script it is given to.
- Every relative link resolves; the README stays about 10 kB and its code map names every module.

Commands are compared with their quoting and line continuations removed: ``python main.py
--n_epochs 30 \\`` + ``--batch_size 4`` is ``python main.py --n_epochs 30 --batch_size 4``.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
# The documents whose commands, snippets, flags and links are checked: the README first.
DOCUMENTS = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
# About 10 kB: set-up, the seed's snippets, one figure, one results table, the code map; the rest belongs in docs/.
README_MAX_BYTES = 10_240
CI_MARKER = "<!-- ci:test-command -->"

CI = "ci"
# README command (unquoted, one line) -> the test that runs it, as "tests/<file>.py::<test>", or CI.
COMMAND_TESTS: dict[str, str] = {
    "pip install -e .[test]": CI,
    "python -m pytest": CI,
    "pip install -e .": CI,
    "python main.py --demo": (
        "tests/test_cli.py::test_demo_command_leaves_a_checkpoint_and_a_figure_and_a_second_demo_replaces_them"
    ),
    "python main.py --list_filters --root_datasets_dir stanford_cars_dataset": (
        "tests/test_cli.py::test_list_filters_command"
    ),
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
        "torchrun --nproc_per_node 2 main.py --n_epochs 30 --batch_size 4 "
        "--checkpoints_dir path/to/dir/for/checkpoints --root_datasets_dir stanford_cars_dataset --car_type Sedan "
        "--car_brand BMW --car_production_year 2012"
    ): "tests/test_train.py::test_two_processes_with_gloo_resume_mid_epoch_as_if_never_stopped",  # with --resume
    "python visualize.py path/to/dir/for/checkpoints/best.pt --split test --n 16 --out cams.png": (
        "tests/test_cli.py::test_visualize_command_draws_a_grid_with_boxes"
    ),
    (
        "python main.py --evaluate path/to/dir/for/checkpoints/best.pt --root_datasets_dir stanford_cars_dataset "
        "--split test"
    ): "tests/test_cli.py::test_evaluate_command_prints_a_table_and_writes_json",
    "python benchmarks/run.py": "tests/test_benchmarks.py::test_quick_benchmark_writes_every_figure",  # in --quick mode
    "python main.py --evaluate best.pt --save_maps maps/ --protocol wsolevaluation": (
        "tests/test_saved_maps.py::test_saved_maps_score_as_evaluate_did"
    ),
    (
        "python main.py --score_maps maps/cam --root_datasets_dir stanford_cars_dataset --car_brand BMW "
        "--protocol wsolevaluation --predictions maps/predictions.csv --threshold 0.67"
    ): "tests/test_saved_maps.py::test_saved_maps_score_as_evaluate_did",
    "python main.py --evaluate best.pt --methods all": (
        "tests/test_compare.py::test_the_methods_flag_prints_a_table_and_names_bad_input"
    ),
    "python visualize.py best.pt --images my_car.jpg photos/ shots/*.png --out_dir cams/": (
        "tests/test_photos.py::test_csv_columns_and_maps"
    ),
    "python visualize.py --imagenet resnet50 --images photos/ --out_dir cams/": (
        "tests/test_photos.py::test_imagenet_explains_the_whole_photo_with_torchvisions_classes"
    ),
    "python visualize.py best.pt --images photos/ --out_dir cams/ --report cams/index.html": (
        "tests/test_photos.py::test_the_report_of_photos_is_one_page_of_cards_without_a_true_class"
    ),
    "python visualize.py best.pt --method gradcam --out cams.png": (
        "tests/test_compare.py::test_visualize_draws_another_methods_map"
    ),
    "python main.py --evaluate best.pt --report report.html": "tests/test_report.py::test_the_report_flag_of_evaluate",
    "pip install -e .[onnx]": CI,
    "python main.py --export best.pt --to model.onnx": (
        "tests/test_export.py::test_every_backbone_exports_with_its_cam_and_onnxruntime_agrees"
    ),
}

# CI commands that do what a README command does, and more: README command -> CI's command.
# The same package, plus the test extra (which holds the onnx extra's packages).
CI_COVERS = {"pip install -e .": "pip install -e .[test]", "pip install -e .[onnx]": "pip install -e .[test]"}

# The README's example paths in Python blocks -> what the test runs them with ({run}: the trained
# run's folder). "stanford_cars_dataset" needs no entry: the scratch folder has one.
PYTHON_PLACEHOLDERS = {
    "path/to/Your/checkpoint": "{run}/best.pt",
    "path/to/dir/for/checkpoints": "{run}",
    "path/to/model.onnx": "{run}/model.onnx",  # docs/deploy.md: exported by the test first
    "path/to/model.json": "{run}/model.json",
    "path/to/my_car.jpg": "{root}/stanford_cars/cars_test/00001.jpg",
}

# Options of programs that are not this repository's scripts.
EXTERNAL_OPTIONS = {
    "torchrun": {"--nproc_per_node", "--nnodes", "--standalone", "--node_rank", "--master_addr", "--master_port"}
}


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
    where: str = "README.md"  # the document, relative to the repository


def _name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


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


def documented_commands() -> list[Command]:
    """The shell commands of every document, each with the document it is in."""
    commands = []
    for path in DOCUMENTS:
        for block in fenced_blocks(path.read_text(encoding="utf-8")):
            if block.language in {"bash", "sh", "shell", "console"}:
                for command in split_commands(block.text, block.line):
                    command.where = _name(path)
                    commands.append(command)
    return commands


def ci_commands() -> list[str]:
    """The commands of the line after the CI marker, read as ``.ci/run`` reads it."""
    lines = readme_text().splitlines()
    assert CI_MARKER in lines, f"README.md has no {CI_MARKER} line; .ci/run needs it"
    rest = lines[lines.index(CI_MARKER) + 1 :]
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


def test_every_documented_command_is_run_by_a_test_or_by_ci() -> None:
    commands = documented_commands()
    assert any(command.where == "README.md" for command in commands), "README.md has no ```bash blocks"
    ci = ci_commands()
    problems = []
    for command in commands:
        target = COMMAND_TESTS.get(command.text)
        where = f"{command.where}:{command.line}: {command.text!r}"
        if target is None:
            problems.append(
                f"{where} is run by no test: add a test, and an entry to COMMAND_TESTS in tests/test_readme.py"
            )
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


def test_command_table_has_only_commands_the_documents_have() -> None:
    documented = {command.text for command in documented_commands()}
    stale = sorted(set(COMMAND_TESTS) - documented)
    assert not stale, f"COMMAND_TESTS lists commands no longer in README.md or docs/: {stale}"


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


def test_every_documented_flag_exists() -> None:
    problems = []
    # In commands: the option belongs to the command's own script (or to torchrun, for its flags).
    for command in documented_commands():
        programs = [token for token in command.tokens if token.endswith(".py") or token in EXTERNAL_OPTIONS]
        options = set().union(*(_script_options(p) or set() for p in programs)) if programs else None
        if options is None:
            continue
        for flag in flags(command.tokens):
            if flag not in options:
                problems.append(f"{command.where}:{command.line}: {flag} is not an option of {' / '.join(programs)}")
    # In prose and code spans: some script of this repository takes it.
    known = set().union(*(_script_options(p) or set() for p in ("main.py", "visualize.py")))
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != "tests"]  # no venvs
        for name in (name for name in files if name.endswith(".py")):
            text = Path(folder, name).read_text(encoding="utf-8", errors="replace")
            known |= set(re.findall(r"""add_argument\(\s*['"](--[\w-]+)""", text))
    known |= set().union(*EXTERNAL_OPTIONS.values())
    for path in DOCUMENTS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", line):
                if flag not in known:
                    problems.append(f"{_name(path)}:{number}: {flag} is an option of no script in the repository")
    assert not problems, "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_documented_python_blocks_run(
    document: Path, trained_run: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    blocks = [
        block for block in fenced_blocks(document.read_text(encoding="utf-8")) if block.language in {"python", "py"}
    ]
    if document == README:
        assert blocks, "README.md has no ```python blocks"
    (tmp_path / "stanford_cars_dataset").symlink_to(synthetic_root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    if document.name == "deploy.md":
        pytest.importorskip("onnxruntime")
        from CAM_Stanford_Cars.export import export_onnx

        export_onnx(trained_run / "best.pt", trained_run / "model.onnx")
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in blocks:
        source = block.text
        for placeholder, value in PYTHON_PLACEHOLDERS.items():
            source = source.replace(placeholder, value.format(run=trained_run, root=synthetic_root))
        # Compiled with blank lines in front, so a traceback names the document's own line.
        code = compile("\n" * (block.line - 1) + source, str(document), "exec")
        try:
            exec(code, namespace)
        finally:
            plt.close("all")


def _substitute(tokens: list[str], replacements: dict[str, str]) -> list[str]:
    out = []
    for token in tokens:
        for placeholder, value in replacements.items():
            if token == placeholder or token.startswith(placeholder + "/"):
                token = value + token[len(placeholder) :]
        out.append(token)
    return out


def test_readme_resume_command_continues_an_interrupted_run(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The documented --resume command (docs/training.md), its paths pointed at a run interrupted after one step."""
    from CAM_Stanford_Cars.config import TrainConfig
    from CAM_Stanford_Cars.run_folder import read_metrics_log
    from CAM_Stanford_Cars.train import fit

    resume_commands = [command for command in documented_commands() if "--resume" in command.tokens]
    assert len(resume_commands) == 1, [command.text for command in resume_commands]
    tokens = resume_commands[0].tokens
    assert tokens[:2] == ["python", "main.py"], tokens
    run_dir = tmp_path / "run"
    # Fewer epochs, smaller images, from scratch, quietly: the values the first run starts with too.
    speed = [
        "--n_epochs",
        "2",
        "--image_size",
        "64",
        "--pretrained",
        "false",
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--progress",
        "false",
    ]
    first = fit(
        TrainConfig(
            root=str(synthetic_root),
            checkpoints_dir=str(run_dir),
            car_type="Sedan",
            car_brand="BMW",
            car_production_year=2012,
            n_epochs=2,
            batch_size=4,
            image_size=64,
            pretrained=False,
            device="cpu",
            num_workers=0,
            progress=False,
        ),
        stop_after_steps=1,
    )
    assert first.interrupted and read_metrics_log(run_dir / "metrics.jsonl") == []  # stopped inside epoch 1
    args = _substitute(
        tokens[2:], {"path/to/dir/for/checkpoints": str(run_dir), "stanford_cars_dataset": str(synthetic_root)}
    )
    from CAM_Stanford_Cars.main import main  # main.py's command, in this process

    caplog.set_level(logging.INFO)
    assert main([*args, *speed]) == 0
    assert [record["epoch"] for record in read_metrics_log(run_dir / "metrics.jsonl")] == [1, 2]
    assert "epoch 2/2" in caplog.text and "Last checkpoint" in capsys.readouterr().out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(match) for match in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def test_every_relative_link_resolves() -> None:
    problems = []
    for path in [*DOCUMENTS, REPO_ROOT / "benchmarks" / "results.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{_name(path)}: link {target!r}: no {file_part}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                problems.append(f"{_name(path)}: link {target!r}: {_name(linked)} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


def test_readme_stays_short_and_links_each_doc() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (limit {README_MAX_BYTES})"
    text = readme_text()
    for doc in DOCUMENTS[1:]:
        assert f"]({_name(doc)})" in text, f"README.md does not link {_name(doc)}"
    for needed in ("images/cam_structure.png", "images/cam_example.png", r"$M_c(x,y) = \sum_{k} w^c_k f_k(x,y)$"):
        assert needed in text, needed


@dataclass
class MapRow:
    floor: str
    module: str  # "model.py" or "data/"
    allowed: set[str]


def code_map() -> list[MapRow]:
    """The rows of the README's "Code map" table, the "may import" column expanded to module names."""
    section = readme_text().split("\n# Code map", 1)[1].split("\n# ", 1)[0]
    rows: list[MapRow] = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`"):
            continue
        floor, module, allowed_text = cells[0], cells[1].strip("`"), re.sub(r"\(.*?\)", "", cells[3])
        allowed: set[str] = set()
        for word in (part.strip() for part in allowed_text.split(",")):
            if word in {"base", "core"}:
                allowed |= {row.module for row in rows if row.floor == word}
            elif word == "all the above":
                allowed |= {row.module for row in rows}
            elif word.startswith("`"):
                name = word.strip("`")
                allowed.add(name if name.endswith("/") else name + ".py")
            else:
                assert word == "-", f"code map: {module}: cannot read {word!r} in its 'may import' column"
        rows.append(MapRow(floor, module, allowed))
    return rows


def _package_modules() -> set[str]:
    files = {path.name for path in REPO_ROOT.glob("*.py") if path.name != "__init__.py"}
    return files | {path.parent.name + "/" for path in REPO_ROOT.glob("*/__init__.py")}


def _imports_of(room: str) -> set[str]:
    """The package's rooms that a module (or every module of a subpackage) imports, at any depth of its code."""
    paths = sorted((REPO_ROOT / room).glob("*.py")) if room.endswith("/") else [REPO_ROOT / room]
    found: set[str] = set()
    for path in paths:
        package = path.parent.relative_to(REPO_ROOT).parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                parts = [*package[: len(package) - node.level + 1], *(node.module or "").split(".")]
            elif (node.module or "").split(".")[0] == "CAM_Stanford_Cars":
                parts = node.module.split(".")[1:]
            else:
                continue
            parts = [part for part in parts if part]
            names = [parts[0]] if parts else [alias.name for alias in node.names]
            for name in names:
                found.add(name + "/" if (REPO_ROOT / name / "__init__.py").is_file() else name + ".py")
    return found - {room}


def test_code_map_names_every_module_and_what_it_imports() -> None:
    rows = code_map()
    mapped = [row.module for row in rows]
    assert sorted(mapped) == sorted(_package_modules()), (
        f"README.md's code map lists {sorted(set(mapped) - _package_modules())} that do not exist and "
        f"misses {sorted(_package_modules() - set(mapped))}"
    )
    problems = [
        f"{row.module} imports {sorted(_imports_of(row.module) - row.allowed)}, which its code map row does not allow"
        for row in rows
        if _imports_of(row.module) - row.allowed
    ]
    assert not problems, "\n".join(problems)
    above: set[str] = set()
    for row in rows:  # import order, so no circle, however lazy the import
        below = row.allowed - above - {row.module}
        assert not below, f"code map: {row.module} may import {sorted(below)}, listed below it"
        above.add(row.module)
