"""Shell completions, man pages and docs/cli.md are generated from the app; the committed ones must not drift.

`.venv/bin/python tools/gen_docs.py` (or `make docs`) regenerates completions/, man/ and docs/cli.md.
These tests regenerate into a temporary folder and compare, check that docs/cli.md is what --help
prints, that every subcommand is covered, the scripts' syntax and behaviour and the pages' rendering
with whatever tools this machine has (skipping otherwise), and that every option's --help states its
default.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from conftest import HANG_GUARD_S

from crowdtk.cli import app

REPO = Path(__file__).resolve().parents[1]
GEN_DOCS = REPO / "tools" / "gen_docs.py"
FIX = "run `.venv/bin/python tools/gen_docs.py`"


def _load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", GEN_DOCS)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["gen_docs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()


def _subcommands() -> list[tuple[list[str], object]]:
    """(path after 'crowdtk', click command) for every visible command below the root."""
    root = typer.main.get_command(app)
    found: list[tuple[list[str], object]] = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            if getattr(sub, "hidden", False):
                continue
            found.append(([*path, name], sub))
            walk(sub, [*path, name])

    walk(root, [])
    return found


SUBCOMMANDS = _subcommands()
SUBCOMMAND_IDS = [" ".join(path) for path, _ in SUBCOMMANDS]
TREE = gen_docs.build_tree()
NODES = {tuple(node.path[1:]): node for node in TREE.walk()}  # () is the root


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    gen_docs.sync(out, gen_docs.generate())
    return out


def _owned(root: Path) -> set[str]:
    return gen_docs.owned_files(root)  # crowdtk* under completions/ and man/, and docs/cli.md


# --------------------------------------------------------------------------- drift


def test_committed_docs_equal_the_regenerated_ones(regenerated):
    fresh = _owned(regenerated)
    committed = _owned(REPO)
    missing = sorted(fresh - committed)
    stale = sorted(committed - fresh)
    differing = sorted(
        rel for rel in fresh & committed if (REPO / rel).read_bytes() != (regenerated / rel).read_bytes()
    )
    assert not (missing or stale or differing), (
        f"completions/, man/ or docs/cli.md are out of date ({FIX}): missing {missing}, stale {stale}, "
        f"differing {differing}"
    )


def _help(path: list[str], capsys, monkeypatch) -> str:
    """`crowdtk <path> --help` as a terminal of 80 columns shows it (CliRunner would force 80 wide)."""
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    code = typer.main.get_command(app).main([*path, "--help"], prog_name="crowdtk", standalone_mode=False)
    assert code in (0, None)
    return capsys.readouterr().out.rstrip("\n")


@pytest.mark.parametrize("path", [[], *(p for p, _ in SUBCOMMANDS)], ids=["crowdtk", *SUBCOMMAND_IDS])
def test_cli_reference_is_what_help_prints(path, capsys, monkeypatch):
    # The drift test compares docs/cli.md with the generator; this compares it with --help itself.
    name = " ".join(["crowdtk", *path])
    section = f"## {name}\n\n```text\n{_help(path, capsys, monkeypatch)}\n```\n"
    assert section in (REPO / "docs" / "cli.md").read_text(encoding="utf-8"), (
        f"docs/cli.md does not hold `{name} --help` as it is now ({FIX})"
    )


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_generation_is_deterministic(regenerated, tmp_path, hash_seed):
    # Another process with another string-hash seed (Click keeps help option names in a set).
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, str(GEN_DOCS), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr
    assert _owned(tmp_path) == _owned(regenerated)
    for rel in _owned(tmp_path):
        assert (tmp_path / rel).read_bytes() == (regenerated / rel).read_bytes(), rel


def test_check_mode_reports_drift_and_exits_1(regenerated, tmp_path):
    shutil.copytree(regenerated, tmp_path, dirs_exist_ok=True)
    run = [sys.executable, str(GEN_DOCS), "--check", "--out", str(tmp_path)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "man" / "crowdtk.1").write_text("edited\n")
    (tmp_path / "man" / "crowdtk-no-such-command.1").write_text(".TH X 1\n")
    (tmp_path / "completions" / "crowdtk.fish").unlink()
    bad = subprocess.run(run, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert bad.returncode == 1
    for expected in (
        "man/crowdtk.1: differs",
        "man/crowdtk-no-such-command.1: stale",
        "completions/crowdtk.fish: missing",
        ".venv/bin/python tools/gen_docs.py",
    ):
        assert expected in bad.stderr
    assert (tmp_path / "man" / "crowdtk.1").read_text() == "edited\n"  # --check writes nothing


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("path", [p for p, _ in SUBCOMMANDS], ids=SUBCOMMAND_IDS)
def test_every_subcommand_has_a_man_page_and_completions(path):
    page = REPO / "man" / f"crowdtk-{'-'.join(path)}.1"
    assert page.is_file(), f"{page.relative_to(REPO)} missing ({FIX})"
    listing = (
        REPO / "man" / ("crowdtk.1" if len(path) == 1 else f"crowdtk-{'-'.join(path[:-1])}.1")
    )  # the parent's page lists it
    assert f"\\fB{gen_docs.roff_text(' '.join(path))}\\fR" in listing.read_text(), f"not in {listing.name} ({FIX})"
    name = path[-1]
    parent = " ".join(path[:-1])
    bash = (REPO / "completions" / "crowdtk.bash").read_text()
    subs = re.search(rf'^\s*"{re.escape(parent)}"\) echo "choice ([^"]*)" ;;', bash, re.MULTILINE)
    assert subs and name in subs.group(1).split(), f"{name} not completed by crowdtk.bash ({FIX})"
    zsh = (REPO / "completions" / "crowdtk.zsh").read_text()
    assert re.search(rf"^\s*'{re.escape(name)}:", zsh, re.MULTILINE), f"{name} not completed by crowdtk.zsh ({FIX})"
    fish = (REPO / "completions" / "crowdtk.fish").read_text()
    assert re.search(rf"^complete -c crowdtk .* -a {re.escape(name)} -d ", fish, re.MULTILINE), (
        f"{name} not completed by crowdtk.fish ({FIX})"
    )
    assert f"\n## crowdtk {' '.join(path)}\n" in (REPO / "docs" / "cli.md").read_text(), f"not in docs/cli.md ({FIX})"


# --------------------------------------------------------------------------- shells


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        pytest.skip(f"{tool} is not installed on this machine")
    return found


def test_bash_completion_parses():
    bash = _need("bash")
    result = subprocess.run([bash, "-n", str(REPO / "completions" / "crowdtk.bash")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _bash_complete(words: list[str], cwd: Path) -> list[str]:
    bash = _need("bash")
    script = (
        f"source {str(REPO / 'completions' / 'crowdtk.bash')!r}\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
        '_crowdtk\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run([bash, "-c", script, "bash", *words], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_completes_commands_options_and_files(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("")
    (tmp_path / "data").mkdir()
    assert set(_bash_complete(["crowdtk", ""], tmp_path)) >= {p[0] for p, _ in SUBCOMMANDS}
    assert "--version" in _bash_complete(["crowdtk", "--"], tmp_path)
    assert {"--output", "--workers", "--help"} <= set(_bash_complete(["crowdtk", "index", "--"], tmp_path))
    assert "manifest.jsonl" in _bash_complete(["crowdtk", "index", "-o", "man"], tmp_path)
    assert "manifest.jsonl" in _bash_complete(["crowdtk", "index", "--output", "=", "man"], tmp_path)  # --output=man
    assert _bash_complete(["crowdtk", "index", "--workers", ""], tmp_path) == []
    # the value of --workers is skipped, so the folder argument still completes as a path
    assert "data" in _bash_complete(["crowdtk", "index", "--workers", "2", "da"], tmp_path)
    # an option with choices (--device of count) completes to exactly its choices
    assert sorted(_bash_complete(["crowdtk", "count", "--device", ""], tmp_path)) == ["auto", "cpu", "cuda"]
    assert sorted(_bash_complete(["crowdtk", "count", "--device", "=", ""], tmp_path)) == ["auto", "cpu", "cuda"]


def test_zsh_completion_parses():
    zsh = _need("zsh")
    result = subprocess.run([zsh, "-n", str(REPO / "completions" / "crowdtk.zsh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fish_completion_parses():
    fish = _need("fish")
    result = subprocess.run(
        [fish, "--no-execute", str(REPO / "completions" / "crowdtk.fish")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- man pages


def test_fish_completion_completes_commands_options_and_files(tmp_path):
    fish = _need("fish")
    (tmp_path / "manifest.jsonl").write_text("")

    def complete(line: str) -> list[str]:
        script = f"source {str(REPO / 'completions' / 'crowdtk.fish')!r}; complete -C {line!r}"
        result = subprocess.run(
            [fish, "--no-config", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD_S
        )
        assert result.returncode == 0, result.stderr
        return [row.split("\t")[0] for row in result.stdout.splitlines()]

    assert set(complete("crowdtk ")) >= {p[0] for p, _ in SUBCOMMANDS}
    assert {"--output", "--workers"} <= set(complete("crowdtk index --"))
    assert "manifest.jsonl" in complete("crowdtk index -o man")
    assert sorted(complete("crowdtk count --device ")) == ["auto", "cpu", "cuda"]


def _man_pages() -> list[Path]:
    return sorted((REPO / "man").glob("crowdtk*.1"))


def test_man_pages_render_with_groff_without_warnings():
    groff = _need("groff")
    for page in _man_pages():
        result = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr.strip(), f"{page.name}: {result.stderr}"


def test_man_pages_render_with_man():
    man = _need("man")
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}
    for page in _man_pages():
        result = subprocess.run(
            [man, "-l", "-P", "cat", str(page)], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
        )
        assert result.returncode == 0, f"{page.name}: {result.stderr}"
        text = re.sub(r".\x08", "", result.stdout)  # overstrike bold, if any
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
            assert section in text, f"{page.name} renders without {section}"


# --------------------------------------------------------------------------- --help states defaults


@pytest.mark.parametrize("path", [p for p, _ in SUBCOMMANDS], ids=SUBCOMMAND_IDS)
def test_every_option_states_its_default_in_help(path):
    # The help record is the text --help prints for the parameter, [default: …] included.
    node = NODES[tuple(path)]
    missing = []
    for param in [*node.arguments, *node.options]:
        spellings = gen_docs.spellings(param) if param.param_type_name == "option" else [param.metavar or param.name]
        if getattr(param, "required", False) or set(spellings) & {"-h", "--help", "--version"}:
            continue
        if "[default:" not in param.get_help_record(node.ctx)[1]:
            missing.append("/".join(spellings))
    assert not missing, (
        f"crowdtk {' '.join(path)} --help: no [default: …] for {', '.join(missing)} "
        "(give it a default Typer shows, or write '[default: …]' in its help)"
    )
