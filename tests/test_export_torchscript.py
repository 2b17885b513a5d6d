"""TorchScript (`--format torchscript`) for every variant: loads with torch.jit.load alone (cmir_trt blocked from
importing) and matches the checkpoint model (probability <= 1e-6 abs) at batch 1 and a batch of 3."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from _export_helpers import inputs, make_checkpoint, max_abs, max_rel, reference
from cmir_trt.export import export_model, verify_artifact

_LOAD_ALONE = r"""
import json, sys
sys.modules["cmir_trt"] = None  # any import of cmir_trt now fails
import numpy as np, torch
m = torch.jit.load(sys.argv[1])
out = {}
for b in (1, 3):
    d = np.load(sys.argv[2] + f"_{b}.npz")
    with torch.no_grad():
        y = m(torch.from_numpy(d["art"]), torch.from_numpy(d["pv"]), torch.from_numpy(d["clinical"]))
    assert isinstance(y, tuple) and len(y) == 3
    np.savez(sys.argv[2] + f"_{b}_out.npz", logit=y[0].numpy(), probability=y[1].numpy(), heatmap=y[2].numpy())
print(json.dumps(sorted(k for k in sys.modules if k.startswith("cmir_trt") and sys.modules[k] is not None)))
"""


@pytest.mark.parametrize("variant", ["S1", "M1", "M2", "M3", "full"])
def test_torchscript_loads_alone_and_matches(tmp_path, variant: str) -> None:  # noqa: ANN001
    ckpt, model = make_checkpoint(tmp_path, variant, seed=3)
    out = export_model(ckpt, "torchscript", tmp_path / "m.pt")
    refs = {}
    for b in (1, 3):
        x = inputs(b, seed=20 + b)
        np.savez(tmp_path / f"x_{b}.npz", art=x[0], pv=x[1], clinical=x[2])
        refs[b] = reference(model, x)
    proc = subprocess.run([sys.executable, "-c", _LOAD_ALONE, str(out), str(tmp_path / "x")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    for b in (1, 3):
        got = np.load(tmp_path / f"x_{b}_out.npz")
        logit, prob, heat = refs[b]
        assert got["probability"].shape == prob.shape == (b, 1)
        assert max_abs(got["probability"], prob) <= 1e-6
        assert max_rel(got["logit"], logit) <= 1e-5
        assert max_abs(got["heatmap"], heat) <= 1e-5
    assert verify_artifact(out)["artifact"]["format"] == "torchscript"


def test_torchscript_rejects_fp16_and_bad_batch(tmp_path) -> None:  # noqa: ANN001
    ckpt, _ = make_checkpoint(tmp_path, "M1", seed=1)
    with pytest.raises(ValueError, match="fp32 only"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", precision="fp16")
    with pytest.raises(ValueError, match="--batch"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", batch="zero")
    with pytest.raises(ValueError, match="--batch"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", batch=0)
    assert not (tmp_path / "m.pt").exists()
