"""`--mask-label` on `train` and `evaluate` reaches the preprocessing parameters (and so the model's stored
params); the cohort loading itself is covered by test_synth / test_evaluate_e2e, so it is stubbed here."""

from __future__ import annotations

import pytest
from _data_helpers import small_models

pytest.importorskip("torch")


class _Stop(RuntimeError):
    pass


@pytest.fixture
def captured(monkeypatch):
    import cmir_trt.data

    seen = []

    def fake_load_cohort(data_dir, params=None, *args, **kwargs):
        seen.append(params)
        raise _Stop("stub: stop after the parameters were chosen")

    monkeypatch.setattr(cmir_trt.data, "load_cohort", fake_load_cohort)
    return seen


def test_train_cli_passes_mask_label(tmp_path, captured, capsys):
    from cmir_trt.cli import main

    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--mask-label", "2",
                 "--quiet"]) == 1
    assert "stub: stop" in capsys.readouterr().err
    assert captured[-1].mask_label == 2 and captured[-1].to_dict()["mask_label"] == 2
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--quiet"]) == 1
    assert captured[-1].mask_label is None and "mask_label" not in captured[-1].to_dict()


def test_evaluate_overrides_the_models_label(tmp_path, captured, capsys):
    from cmir_trt.cli import main

    ckpt, _ = small_models(tmp_path / "m")
    for extra, want in (([], None), (["--mask-label", "3"], 3)):
        assert main(["evaluate", "--model", str(ckpt), "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                     *extra]) == 1
        assert captured[-1].mask_label == want and captured[-1].image_size == 32  # the model's own params
    assert "stub: stop" in capsys.readouterr().err
