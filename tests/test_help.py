"""`--help` of the scoring job: every option this tool defines, in its group, with its default;
every subcommand; the program as the user typed it; where Beam's own options are documented."""
import argparse
import os
import subprocess
import sys

import pytest

from pipeline.__main__ import main
from pipeline.options import (BEAM_OPTIONS_DOCS, OPTION_GROUPS, SUBCOMMANDS, BatchPredictOptions,
                              help_text, program_name)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _own_actions() -> list[argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    BatchPredictOptions._add_argparse_args(parser)
    return parser._actions


def _shown_default(action: argparse.Action) -> str:
    """How the help must state the option's default, worked out from the action itself."""
    if action.required:
        return "(required)"
    if "(default:" in (action.help or ""):  # the help text says it in words
        return "(default:"
    if action.default is None:
        return "(default: none)"
    if action.default is False:
        return "(default: off)"
    return f"(default: {action.default})"


def _entries(text: str) -> dict[str, str]:
    """{option string: its help entry, lines joined}: argparse starts an entry with two spaces
    and the option, and wraps the rest deeper."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  --"):
            current = line.split()[0]
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def _check(text: str, prog: str) -> None:
    entries = _entries(text)
    for action in _own_actions():
        for option in action.option_strings:
            assert option in entries, f"{option} missing from --help"
            entry = entries[option]
            assert _shown_default(action) in entry, (option, entry)
            assert " ".join(action.help.split())[:40] in entry, (option, entry)
    for name, line in SUBCOMMANDS.items():
        assert f"{prog} {name}" in text and line in text
    for url in BEAM_OPTIONS_DOCS:
        assert url in text
    assert text.startswith(f"usage: {prog} --model")
    if prog != "python -m pipeline":
        assert "python -m pipeline" not in text


def test_every_option_is_in_a_group_and_the_groups_hold_only_options():
    dests = {a.dest for a in _own_actions()}
    grouped = [d for group in OPTION_GROUPS.values() for d in group]
    assert sorted(grouped) == sorted(dests)
    for title in OPTION_GROUPS:
        assert f"\n{title}:\n" in help_text()
    assert "\nother:\n" not in help_text()


def test_help_in_a_fresh_process_lists_options_defaults_and_subcommands():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    _check(done.stdout, "python -m pipeline")
    # help needs no TensorFlow: none of its start-up lines either
    assert "tensorflow" not in done.stderr.lower()


def test_the_console_script_names_itself():
    script = os.path.join(os.path.dirname(sys.executable), "batch-predict")
    if not os.path.exists(script):
        pytest.skip("the console script is not installed")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _check(done.stdout, "batch-predict")


def test_help_in_process(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    _check(capsys.readouterr().out, "python -m pipeline")
    with pytest.raises(SystemExit) as info:
        main(["--model", "m", "-h"])
    assert info.value.code == 0


@pytest.mark.parametrize("argv0, prog", [
    ("/usr/lib/python3/site-packages/pipeline/__main__.py", "python -m pipeline"),
    ("/venv/bin/batch-predict", "batch-predict"),
    ("C:\\venv\\Scripts\\batch-predict.exe".replace("\\", os.sep), "batch-predict"),
    ("/venv/bin/pytest", "python -m pipeline"),
])
def test_program_name(argv0, prog):
    assert program_name(argv0) == prog
