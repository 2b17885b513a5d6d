"""A `.pt` that is not a cmir checkpoint gets one line, never torch's advice to unpickle it (issue 15, "CLI")."""

from __future__ import annotations

import argparse
import collections

import pytest

torch = pytest.importorskip("torch")

from cmir_trt.cli import main  # noqa: E402
from cmir_trt.model.checkpoint import CheckpointError, read_checkpoint  # noqa: E402


def _cases(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": argparse.Namespace(a=1)}, pickled)        # arbitrary Python objects (pickle)
    plain = tmp_path / "plain.pt"
    torch.save(collections.OrderedDict(w=torch.zeros(3)), plain)  # a bare state_dict of some other model
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    return {pickled: "holds Python objects", plain: "missing format marker", junk: "not a readable cmir checkpoint"}


def test_read_checkpoint_refuses_in_one_line(tmp_path):
    for path, why in _cases(tmp_path).items():
        with pytest.raises(CheckpointError, match=why) as ei:
            read_checkpoint(path)
        msg = str(ei.value)
        assert "\n" not in msg and "weights_only=False" not in msg and str(path) in msg


def test_cli_says_one_line(tmp_path, capsys):
    for path in _cases(tmp_path):
        rc = main(["predict", "--model", str(path), "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "weights_only" not in err and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()  # nothing written for a model that cannot be loaded
