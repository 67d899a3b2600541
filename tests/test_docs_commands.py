"""Every command the README and `docs/*.md` show, checked against the real command lines.

Each shell command in a fenced `bash`/`console` block (and each inline `uv run …`) is parsed by
the CLI it names (`pamap`'s argparse, the click commands of `dagster`, `dg`, `mlflow`,
`dagster-daemon`, `dagster-webserver`, `dagster-celery`; the bench scripts' and modules'
argparse flags), so an unknown subcommand, flag or choice fails here. The names a Dagster command
uses (jobs, assets, sensors, schedules, partition keys, run config) must exist in the code
location. Python blocks compile and import what they use. Links stay inside the repository.
The cheap commands (synthetic tiny data, variants, observing raw files, one subject's ingest as
assets and as a partitioned job, `--help`) then run as documented, in a temporary project (its
own data root and instance).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import click
import dagster as dg
import pytest
from click.testing import CliRunner

from ml_core.training.variants import load_variants
from orchestration.cli import build_parser
from orchestration.cli import main as pamap_main
from orchestration.definitions import defs as load_defs

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
CODE_LOCATION = "orchestration.definitions"
# Commands the docs may show that are not this project's CLIs (deployment steps, shell).
EXTERNAL = {"cp", "createdb", "mkdir", "rm"}
DEV_TOOLS = {"ruff", "ty"}
CLICK_TOOLS = {"dagster", "dg", "mlflow", "dagster-daemon", "dagster-webserver", "dagster-celery"}
# Assets of one subject's ingest chain: cheap enough to materialize here.
INGEST_ASSETS = {"raw_recording", "validated_recording", "imputed_recording", "activity_shards"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    argv: tuple[str, ...]  # without `uv run` and leading VAR=value
    env: tuple[tuple[str, str], ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def _fenced_blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced block."""
    lang, start, lines = None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1) or "text", number + 1, []
        elif fence:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def _split(tokens: list[str]) -> Iterator[list[str]]:
    """Commands joined by &&, ; or a trailing & become separate commands."""
    current: list[str] = []
    for token in tokens:
        if token in {"&&", ";", "&"}:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def _command(where: str, tokens: list[str]) -> Command | None:
    env = []
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env.append((name, value))
    if tokens[:1] == ["time"]:
        tokens = tokens[1:]
    if not tokens or tokens[0] == "export":
        return None
    if tokens[:2] == ["uv", "run"]:
        tokens = tokens[2:]
    return Command(where, tuple(tokens), tuple(env))


def shell_commands(path: Path) -> list[Command]:
    """Every command of the file's shell blocks (continuations joined, comments dropped;
    in `console` blocks only the `$ ` lines), and every inline `uv run …` span."""
    commands = []
    rel = path.relative_to(ROOT)
    for lang, start, lines in _fenced_blocks(path):
        if lang not in SHELL_BLOCKS:
            continue
        logical: list[tuple[int, str]] = []
        pending = ""
        for offset, line in enumerate(lines):
            if lang == "console":
                if line.startswith("$ "):
                    logical.append((start + offset, line[2:]))
                continue
            pending += line.rstrip("\\") + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                logical.append((start + offset, pending))
                pending = ""
        for number, text in logical:
            for tokens in _split(shlex.split(text, comments=True)):
                command = _command(f"{rel}:{number}", tokens)
                if command:
                    commands.append(command)
    text = path.read_text()
    for match in re.finditer(r"(?<!`)`(uv run [^`]+)`(?!`)", text):
        number = text.count("\n", 0, match.start()) + 1
        command = _command(f"{rel}:{number}", shlex.split(match.group(1)))
        if command:
            commands.append(command)
    return commands


def python_blocks(path: Path) -> list[tuple[str, str]]:
    rel = path.relative_to(ROOT)
    return [
        (f"{rel}:{start}", "\n".join(lines))
        for lang, start, lines in _fenced_blocks(path)
        if lang == "python"
    ]


ALL_COMMANDS = [c for path in DOC_FILES for c in shell_commands(path)]


# --- checks ----------------------------------------------------------------------------------


@cache
def definitions() -> dg.Definitions:
    return load_defs()


@cache
def variant_names() -> frozenset[str]:
    return frozenset(v.name for v in load_variants())


@cache
def click_command(tool: str) -> click.Command:
    (ep,) = {e.value: e for e in entry_points(group="console_scripts", name=tool)}.values()
    obj = ep.load()
    if isinstance(obj, click.Command):
        return obj
    cli = getattr(importlib.import_module(ep.module), "cli", None)  # what main() invokes
    assert isinstance(cli, click.Command), f"{tool}: no click command in {ep.module}"
    return cli


def parse_click(tool: str, args: list[str]) -> tuple[list[str], dict]:
    """Resolve the subcommands and parse the options as the real CLI would; returns the
    subcommand path and the parsed parameters."""
    command, path = click_command(tool), []
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"`{tool} {' '.join(path)}` has no subcommand {args[0]!r}"
        command, path, args = sub, [*path, args[0]], args[1:]
    try:
        ctx = command.make_context(" ".join([tool, *path]), list(args))
    except click.exceptions.Exit as done:  # --help
        assert done.exit_code == 0
        return path, {}
    except click.BadParameter as exc:
        # A file the page tells you to create first (celery.yaml, a run config) is not here.
        if isinstance(exc.param and exc.param.type, click.Path) and "does not exist" in str(exc):
            return path, {}
        raise
    return path, ctx.params


def check_partition(partitions_def: dg.PartitionsDefinition | None, key: str, what: str) -> None:
    assert partitions_def is not None, f"{what} is not partitioned, but got --partition {key}"
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dims = partitions_def.partitions_defs
        parts = key.split("|")
        assert len(parts) == len(dims), f"{what}: key {key!r} needs {[d.name for d in dims]}"
        for dim, part in zip(dims, parts, strict=True):
            check_partition(dim.partitions_def, part, f"{what}[{dim.name}]")
    elif isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        if partitions_def.name == "variant":
            assert key in variant_names(), f"{what}: unknown variant {key!r}"
        else:
            assert re.fullmatch(r"[\w.-]+", key), f"{what}: bad dynamic key {key!r}"
    else:
        assert key in partitions_def.get_partition_keys(), f"{what}: no partition {key!r}"


def check_dagster_names(params: dict) -> None:
    """The jobs, assets, sensors, schedules, partitions and run config a Dagster command
    names exist in the code location."""
    defs = definitions()
    modules = params.get("module_name") or ()
    modules = (modules,) if isinstance(modules, str) else modules
    assert all(m == CODE_LOCATION for m in modules), modules
    job_name = params.get("job_name") or params.get("job")
    job = defs.resolve_job_def(job_name) if job_name else None
    selection = params.get("select") or params.get("assets")
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    selected = selection.split(",") if selection else []
    for name in selected:
        assert name in specs, f"no asset {name!r}"
    partition_keys = [params["partition"]] if params.get("partition") else []
    if params.get("partitions"):
        partition_keys += params["partitions"].split(",")
    tags = json.loads(params["tags"]) if params.get("tags") else {}
    if "dagster/partition" in tags:
        partition_keys.append(tags["dagster/partition"])
    for key in partition_keys:
        if job is not None:
            check_partition(job.partitions_def, key, f"job {job_name}")
        for name in selected:
            check_partition(specs[name].partitions_def, key, f"asset {name}")
    if params.get("config_json"):
        config = json.loads(params["config_json"])
        target = job or defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey(n) for n in selected}
        )
        dg.validate_run_config(target, config)
    if params.get("sensor_name"):
        defs.resolve_sensor_def(params["sensor_name"])
    if params.get("schedule_name"):
        defs.resolve_schedule_def(params["schedule_name"])


def argparse_flags(source: str) -> set[str]:
    """The option strings a script's or module's argparse parser declares."""
    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            flags |= {n for n in names if isinstance(n, str) and n.startswith("-")}
    return flags


def check_imports(code: str, where: str) -> None:
    """The code compiles, and every module and name it imports exists."""
    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{where}: {node.module} has no {alias.name}"


def check_python(args: list[str], where: str) -> None:
    if args[0] == "-c":
        check_imports(args[1], where)
        return
    if args[0] == "-m":
        spec = importlib.util.find_spec(args[1])
        assert spec and spec.origin, f"no module {args[1]}"
        script, rest = Path(spec.origin), args[2:]
    else:
        script, rest = ROOT / args[0], args[1:]
    assert script.is_file(), f"no script {script}"
    flags = argparse_flags(script.read_text())
    for arg in rest:
        if arg.startswith("-"):
            assert arg.split("=")[0] in flags, f"{script.name} has no option {arg}"


def check_command(command: Command) -> None:
    tool, args = command.argv[0], list(command.argv[1:])
    if tool == "pamap":
        try:
            build_parser().parse_args(args)
        except SystemExit as done:
            assert done.code == 0, f"pamap rejects {args}"
    elif tool in CLICK_TOOLS:
        _, params = parse_click(tool, args)
        if tool in {"dagster", "dg"}:
            check_dagster_names(params)
    elif tool == "python":
        check_python(args, command.where)
    elif tool == "pytest":
        for arg in args:
            if not arg.startswith("-") and not arg.isdigit():
                assert (ROOT / arg.split("::")[0]).exists(), f"no test path {arg}"
    elif tool == "uv":
        assert args[:1] == ["sync"], args
    elif tool == "bash":
        assert (ROOT / args[0]).is_file(), args
    else:
        assert tool in DEV_TOOLS | EXTERNAL, f"no check for {tool!r}: add one to this test"


def test_the_docs_show_commands() -> None:
    tools = {c.argv[0] for c in ALL_COMMANDS}
    assert {"pamap", "dagster", "dg", "mlflow", "pytest"} <= tools
    assert len(ALL_COMMANDS) > 60


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_documented_command_parses(command: Command) -> None:
    check_command(command)


PYTHON_BLOCKS = [b for path in DOC_FILES for b in python_blocks(path)]


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_documented_python_imports(where: str, code: str) -> None:
    check_imports(code, where)


def test_links_stay_in_the_repository() -> None:
    for path in [*DOC_FILES, ROOT / "CHANGELOG.md"]:
        for match in re.finditer(r"\]\(([^)\s]+)\)", path.read_text()):
            target = match.group(1)
            if re.match(r"^[a-z]+://", target):
                continue
            file = target.split("#")[0]
            resolved = (path.parent / file).resolve() if file else path
            assert resolved.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
            assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_check_catches_broken_commands() -> None:
    """The checks fail on what a stale page would show."""
    broken = [
        ("dagster", "job", "launch", "-m", CODE_LOCATION, "-j", "inbox_job", "--partition", "a"),
        ("dagster", "job", "execute", "-m", CODE_LOCATION, "-j", "no_such_job"),
        ("dagster", "asset", "materialize", "-m", CODE_LOCATION, "--select", "raw_recording",
         "--partition", "110"),
        ("dg", "launch", "--assets", "trained_model", "--partition", "loso-101|no_such_variant"),
        ("dagster", "asset", "materialize", "-m", CODE_LOCATION, "--select", "champion_model",
         "--config-json", '{"ops": {"champion_model": {"config": {"no_such_gate": 1}}}}'),
        ("pamap", "demo", "--models", "no_such_model"),
        ("python", "bench/train.py", "--no-such-flag"),
    ]  # fmt: skip
    for argv in broken:
        errors = (AssertionError, click.ClickException, dg.DagsterError, KeyError)
        with pytest.raises(errors), contextlib.redirect_stderr(io.StringIO()):
            check_command(Command("test", argv))


# --- the cheap commands, run as documented ------------------------------------------------


def _cheap(command: Command) -> int | None:
    """Order in which a cheap command runs (its data must exist first), or None to skip."""
    argv = command.argv
    if argv[0] == "pamap":
        if "--help" in argv:
            return 0
        if argv[1:] == ("synth", "--scale", "tiny"):
            return 1
        if argv[1] == "variants" and "--file" not in argv:
            return 2
        return None
    if argv[0] not in {"dagster", "dg"}:
        return None
    _, params = parse_click(argv[0], list(argv[1:]))
    if argv[1:3] == ("job", "execute") and params.get("job_name") == "observe_raw_files":
        return 3
    selection = params.get("select")
    if selection and set(selection.split(",")) <= INGEST_ASSETS and params.get("partition"):
        return 4
    # `dg launch --assets` and `--job` run the same code as the two above; a partitioned job
    # is what `dagster job launch` cannot do, so that one runs too.
    if argv[1:2] == ("launch",) and params.get("job") == "ingest_job" and params.get("partition"):
        return 5
    return None


def test_cheap_documented_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = sorted((c for c in ALL_COMMANDS if _cheap(c) is not None), key=_cheap)
    kinds = {_cheap(c) for c in cheap}
    # Raw files are recorded by a sensor now; a documented observation job (3) runs if shown.
    assert {0, 1, 2, 4, 5} <= kinds, f"the docs no longer show every cheap command: {kinds}"
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(ROOT)
    done = set()
    for command in cheap:
        if command.argv in done:
            continue
        done.add(command.argv)
        argv = list(command.argv)
        if argv[0] == "pamap":
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    code = pamap_main(argv[1:])
            except SystemExit as exit_:
                code = exit_.code
            assert code == 0, f"{command}\n{out.getvalue()}"
        else:
            result = CliRunner().invoke(click_command(argv[0]), argv[1:])
            assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"
    shards = tmp_path / "data" / "processed" / "subject_101"
    assert any(shards.glob("activity_*.parquet")), "the documented ingest wrote no shards"
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert set(variant_names()) <= set(instance.get_dynamic_partitions("variant"))


def test_every_pamap_subcommand_is_in_the_cookbook() -> None:
    """A new `pamap` subcommand gets a line in docs/cli.md, where users look for it."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    shown = {
        c.argv[1 + c.argv[1:].index(name)]
        for c in shell_commands(ROOT / "docs" / "cli.md")
        if c.argv[0] == "pamap"
        for name in subparsers.choices
        if name in c.argv[1:]
    }
    missing = sorted(set(subparsers.choices) - shown)
    assert not missing, f"docs/cli.md shows no `uv run pamap {missing[0]} …`: add it"
