"""TorchScript (`--format torchscript`) for every variant: loads with torch.jit.load alone (cmir_trt blocked from
importing) and matches the checkpoint model (probability <= 1e-6 abs) at batch 1 and a batch of 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _export_helpers import inputs, make_checkpoint, max_abs, max_rel, reference

from cmir_trt.export import export_model, verify_artifact

VARIANTS = ("S1", "M1", "M2", "M3", "full")

# One fresh interpreter loads every variant's archive with cmir_trt blocked, runs it at batch 1 and 3, and reports
# which cmir_trt modules got imported (must be none).
_LOAD_ALONE = r"""
import json, sys
sys.modules["cmir_trt"] = None  # any import of cmir_trt now fails
import numpy as np, torch
root = sys.argv[1]
for v in sys.argv[2:]:
    m = torch.jit.load(f"{root}/{v}.pt")
    for b in (1, 3):
        d = np.load(f"{root}/x_{b}.npz")
        with torch.no_grad():
            y = m(torch.from_numpy(d["art"]), torch.from_numpy(d["pv"]), torch.from_numpy(d["clinical"]))
        assert isinstance(y, tuple) and len(y) == 3
        np.savez(f"{root}/{v}_{b}_out.npz", logit=y[0].numpy(), probability=y[1].numpy(), heatmap=y[2].numpy())
print(json.dumps(sorted(k for k in sys.modules if k.startswith("cmir_trt") and sys.modules[k] is not None)))
"""


@pytest.fixture(scope="module")
def loaded_alone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple]]:
    root = tmp_path_factory.mktemp("torchscript")
    xs = {b: inputs(b, seed=20 + b) for b in (1, 3)}
    for b, x in xs.items():
        np.savez(root / f"x_{b}.npz", art=x[0], pv=x[1], clinical=x[2])
    refs = {}
    for v in VARIANTS:
        ckpt, model = make_checkpoint(root, v, seed=3)
        export_model(ckpt, "torchscript", root / f"{v}.pt")
        refs[v] = {b: reference(model, x) for b, x in xs.items()}
    proc = subprocess.run([sys.executable, "-c", _LOAD_ALONE, str(root), *VARIANTS], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], "the archive pulled in cmir_trt"
    return root, refs


@pytest.mark.parametrize("variant", VARIANTS)
def test_torchscript_loads_alone_and_matches(loaded_alone: tuple[Path, dict[str, tuple]], variant: str) -> None:
    root, refs = loaded_alone
    for b in (1, 3):
        got = np.load(root / f"{variant}_{b}_out.npz")
        logit, prob, heat = refs[variant][b]
        assert got["probability"].shape == prob.shape == (b, 1)
        assert got["heatmap"].shape == heat.shape == (b, 1, 40, 40)
        assert max_abs(got["probability"], prob) <= 1e-6
        assert max_rel(got["logit"], logit) <= 1e-5
        assert max_abs(got["heatmap"], heat) <= 1e-5
    assert verify_artifact(root / f"{variant}.pt")["artifact"]["format"] == "torchscript"


def test_torchscript_rejects_fp16_and_bad_batch(tmp_path) -> None:  # noqa: ANN001
    ckpt, _ = make_checkpoint(tmp_path, "M1", seed=1)
    with pytest.raises(ValueError, match="fp32 only"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", precision="fp16")
    with pytest.raises(ValueError, match="--batch"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", batch="zero")
    with pytest.raises(ValueError, match="--batch"):
        export_model(ckpt, "torchscript", tmp_path / "m.pt", batch=0)
    assert not (tmp_path / "m.pt").exists()
