"""Every help text of `cmir-trt` renders (issue 15, "CLI"): the top level, bare `cmir-trt`, every subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cmir_trt.cli import _command_modules, main


def test_top_level_and_bare(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    names = list(_command_modules())
    assert len(names) >= 8 and all(n in out for n in names)
    assert main([]) == 2  # no command: the help, not a traceback
    assert "usage: cmir-trt" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(_command_modules()))
def test_every_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as ei:
        main([name, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cmir-trt {name}") and "Traceback" not in out


def test_help_in_a_fresh_process():
    """The installed entry point, as a user runs it (a % in a help string crashed it before)."""
    r = subprocess.run([sys.executable, "-m", "cmir_trt.cli", "evaluate", "--help"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "95% CIs" in r.stdout and r.stderr == ""


def test_nnunet_style_aliases(capsys):
    for name in ("predict", "preprocess"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "-i INPUT, --input INPUT" in out and "-o OUT, --out OUT" in out
