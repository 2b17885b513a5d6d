"""The training loop: AdamW, class-balanced BCE, augmentation, early stopping on the internal-validation AUC,
resumable, and bit-reproducible on CPU for a given seed, data and thread count.

Reproducibility: every source of randomness is re-seeded from (seed, epoch) at the start of each epoch (shuffling,
augmentation, dropout), deterministic algorithms are enforced and the intra-op thread count is fixed; the resume file
therefore needs no RNG state, and an interrupted-then-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from .._io import atomic_write_via
from ..model import CMIR, CMIRConfig, build_model, save_checkpoint
from .augment import augment_batch
from .config import TrainConfig

RESUME_FORMAT = "cmir-train-resume"
RESUME_VERSION = 1


@dataclass
class TrainData:
    """Arrays the loop needs (already preprocessed and normalised), per split."""

    art: np.ndarray        # [N, 3, S, S] float32
    pv: np.ndarray         # [N, 3, S, S] float32
    clinical: np.ndarray   # [N, F] float32, normalised
    labels: np.ndarray     # [N] 0/1
    splits: np.ndarray     # [N] "train" | "internal" | "external"

    def __post_init__(self) -> None:
        self.art = np.asarray(self.art, dtype=np.float32)
        self.pv = np.asarray(self.pv, dtype=np.float32)
        self.clinical = np.asarray(self.clinical, dtype=np.float32)
        self.labels = np.asarray(self.labels).astype(np.int64)
        self.splits = np.asarray(self.splits).astype(str)
        n = self.labels.shape[0]
        for name in ("art", "pv", "clinical", "splits"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"training data: {name} has {getattr(self, name).shape[0]} rows, labels {n}")
        if self.art.shape != self.pv.shape or self.art.ndim != 4:
            raise ValueError(f"training data: art {self.art.shape} and pv {self.pv.shape} must be equal [N,C,S,S]")
        for name in ("art", "pv", "clinical"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"training data: {name} contains NaN/inf")
        for split in ("train", "internal"):
            y = self.labels[self.splits == split]
            if y.size == 0 or y.min() == y.max():
                raise ValueError(f"training data: the {split!r} split needs cases of both classes "
                                 f"(has {int(y.sum())} MVI+ of {y.size})")


@dataclass
class TrainResult:
    model: CMIR                 # best-epoch weights, eval mode
    best_epoch: int
    best_auc: float
    epochs_run: int
    threshold: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


@contextlib.contextmanager
def deterministic(threads: int, warn_only: bool = False) -> Iterator[None]:
    """Deterministic algorithms and a fixed intra-op thread count for the block; previous settings restored.

    warn_only (used on CUDA, where bit-reproducibility is not promised): ops without a deterministic kernel warn
    instead of raising."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def zero_init_residual(model: torch.nn.Module) -> int:
    """Zero the scale of the last batch norm of every bottleneck's residual branch; returns how many."""
    from ..model.resnet import Bottleneck

    n = 0
    for mod in model.modules():
        if isinstance(mod, Bottleneck):
            bn = mod.conv3[-1]
            if isinstance(bn, torch.nn.BatchNorm2d):
                torch.nn.init.zeros_(bn.weight)
                n += 1
    return n


def _epoch_seed(seed: int, epoch: int) -> int:
    # distinct, stable 63-bit seeds per (seed, epoch); SeedSequence mixes well and is version-stable
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def predict_proba(model: CMIR, art: np.ndarray, pv: np.ndarray, clinical: np.ndarray, batch_size: int = 64,
                  device: str = "cpu") -> np.ndarray:
    """P(MVI+) [N] float64 in eval mode (for a 3-class model: 1 - P(M0))."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, art.shape[0], batch_size):
            a = torch.from_numpy(np.ascontiguousarray(art[i:i + batch_size])).to(device)
            p = torch.from_numpy(np.ascontiguousarray(pv[i:i + batch_size])).to(device)
            c = torch.from_numpy(np.ascontiguousarray(clinical[i:i + batch_size])).to(device)
            prob = model(a, p, c).probability
            prob = prob[:, 0] if prob.shape[1] == 1 else 1.0 - prob[:, 0]
            out.append(prob.double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def _auc(labels: np.ndarray, prob: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if not np.all(np.isfinite(prob)):
        return math.nan
    return float(roc_auc_score(labels, prob))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_via(path, lambda tmp: torch.save(obj, tmp))


def resume_path(out: str | os.PathLike[str]) -> Path:
    """Where the resume state of a run writing `out` lives: next to it, `<out>.resume`."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def versions() -> dict[str, str]:
    # plain str: torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {"cmir_trt": str(__version__), "torch": str(torch.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}


def _load_resume(path: Path, cfg: TrainConfig, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable resume file ({type(exc).__name__}: {exc}); delete it or "
                         f"train without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or \
            state.get("format_version") != RESUME_VERSION:
        raise ValueError(f"{path} is not a cmir training resume file")
    if state.get("train_config") != cfg.to_dict():
        raise ValueError(f"{path} was written by a run with different settings; delete it or use the same options")
    if state.get("data_fingerprint") != fingerprint:
        raise ValueError(f"{path} was written for different training data; delete it or use the same data")
    return state


def data_fingerprint(data: TrainData) -> str:
    """sha256 over the arrays and labels: a resume file is only valid for the same data."""
    import hashlib

    h = hashlib.sha256()
    for arr in (data.art, data.pv, data.clinical, data.labels.astype(np.int64)):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("|".join(map(str, data.splits)).encode())
    return h.hexdigest()


def fit(data: TrainData, cfg: TrainConfig, out: str | os.PathLike[str], metadata: dict[str, Any],
        resume: bool = False, progress: bool | None = None, synthetic: bool = False,
        log: Callable[[str], None] | None = None) -> TrainResult:
    """Train, keep the best internal-AUC epoch, choose its Youden threshold on the internal split, and write the
    checkpoint `out` (metadata + threshold, seed, versions, training history). A resume file `<out>.resume` is
    written after every epoch; with resume=True a matching one is continued."""
    from tqdm.auto import tqdm

    from ..evaluation.metrics import youden_threshold

    out = Path(out)
    log = log or (lambda s: tqdm.write(s))  # tqdm.write keeps a live progress bar intact
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch has no CUDA device here")
        # deterministic cuBLAS needs a fixed workspace; only effective before the first cuBLAS call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    s = data.art.shape[-1]
    if s != cfg.image_size:
        raise ValueError(f"data image size {s} differs from the training config's image_size {cfg.image_size}")
    tr = np.flatnonzero(data.splits == "train")
    iv = np.flatnonzero(data.splits == "internal")
    y_tr = data.labels[tr].astype(np.float32)
    y_iv = data.labels[iv]
    n_pos = float(y_tr.sum())
    pos_weight = torch.tensor([(y_tr.size - n_pos) / n_pos], dtype=torch.float32, device=device)
    fp = data_fingerprint(data)
    tag = " (synthetic)" if synthetic else ""

    with deterministic(cfg.threads, warn_only=device.type != "cpu"):
        torch.manual_seed(cfg.seed)
        model_cfg = CMIRConfig(num_clinical=data.clinical.shape[1], **cfg.model_fields())
        model = build_model(model_cfg)
        if cfg.zero_init_residual:
            zero_init_residual(model)
        model = model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        start_epoch, best_auc, best_epoch, bad = 0, -math.inf, -1, 0
        best_state: dict[str, torch.Tensor] | None = None
        history: list[dict[str, float]] = []
        rpath = resume_path(out)
        if resume:
            state = _load_resume(rpath, cfg, fp)
            if state is not None:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                start_epoch, best_auc, best_epoch = state["epoch"], state["best_auc"], state["best_epoch"]
                bad, best_state, history = state["bad_epochs"], state["best_model"], state["history"]
                log(f"resuming from {rpath} after epoch {start_epoch}")

        art_t = torch.from_numpy(np.ascontiguousarray(data.art[tr]))
        pv_t = torch.from_numpy(np.ascontiguousarray(data.pv[tr]))
        cl_t = torch.from_numpy(np.ascontiguousarray(data.clinical[tr]))
        y_t = torch.from_numpy(y_tr)[:, None]
        stopped = bad >= cfg.patience
        bar = tqdm(range(start_epoch, cfg.epochs), desc="train", unit="epoch", initial=start_epoch, total=cfg.epochs,
                   disable=None if progress is None else not progress, file=sys.stderr)
        for epoch in (bar if not stopped else []):
            es = _epoch_seed(cfg.seed, epoch)
            torch.manual_seed(es)  # dropout
            g = torch.Generator().manual_seed(es)
            perm = torch.randperm(tr.size, generator=g)
            if perm.numel() % cfg.batch_size == 1:  # a batch of one breaks batch norm: drop that case this epoch
                perm = perm[:-1]
            model.train()
            total, count = 0.0, 0
            for i in range(0, perm.numel(), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                a, p = augment_batch(art_t[idx], pv_t[idx], g, cfg.flip, cfg.rotate_deg, cfg.intensity_jitter,
                                    cfg.noise, cfg.resolution)
                logit = model(a.to(device), p.to(device), cl_t[idx].to(device)).logit
                loss = F.binary_cross_entropy_with_logits(logit, y_t[idx].to(device), pos_weight=pos_weight)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                                             f"lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                total += float(loss.item()) * idx.numel()
                count += idx.numel()
            sched.step()
            prob_iv = predict_proba(model, data.art[iv], data.pv[iv], data.clinical[iv], cfg.eval_batch_size,
                                    cfg.device)
            auc = _auc(y_iv, prob_iv)
            n_bad = int(np.count_nonzero(~np.isfinite(prob_iv)))
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "internal_auc": auc,
                            "lr": float(opt.param_groups[0]["lr"])})
            if math.isfinite(auc) and auc > best_auc + cfg.min_delta:
                best_auc, best_epoch, bad = auc, epoch + 1, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                bad += 1
            bar.set_postfix({"loss": f"{total / max(count, 1):.4f}", f"AUC{tag}": f"{auc:.3f}",
                             "best": f"{best_auc:.3f}@{best_epoch}"})
            auc_txt = f"{auc:.4f}" if not n_bad else f"n/a ({n_bad} non-finite outputs)"
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {total / max(count, 1):.4f}  "
                f"internal-validation AUC{tag} {auc_txt}  best {best_auc:.4f} (epoch {best_epoch})")
            _atomic_torch_save({
                "format": RESUME_FORMAT, "format_version": RESUME_VERSION, "train_config": cfg.to_dict(),
                "data_fingerprint": fp, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best_auc": best_auc,
                "best_epoch": best_epoch, "bad_epochs": bad, "best_model": best_state, "history": history,
            }, rpath)
            if bad >= cfg.patience:
                stopped = True
                log(f"early stopping: no internal-validation AUC gain for {cfg.patience} epochs")
                break
        bar.close()
        if best_state is None:
            raise ValueError("no epoch produced a finite internal-validation AUC; nothing to save")
        model.load_state_dict(best_state)
        model.eval()
        prob_iv = predict_proba(model, data.art[iv], data.pv[iv], data.clinical[iv], cfg.eval_batch_size, cfg.device)
        threshold = youden_threshold(y_iv, prob_iv)

    meta = dict(metadata)
    meta.update({
        "threshold": float(threshold),
        "threshold_rule": "Youden's J on the internal-validation split; MVI+ if probability >= threshold",
        "seed": int(cfg.seed),
        "versions": versions(),
        "train_config": cfg.to_dict(),
        "epoch": int(best_epoch),
        "epochs_run": len(history),
        "internal_auc": float(best_auc),
        "history": history,
    })
    # canonical plain data: a JSON round trip gives an object graph that depends only on the values, so pickle's
    # memo (shared references) and hence the checkpoint bytes are the same for a resumed and an uninterrupted run
    meta = json.loads(json.dumps(meta))
    model = model.cpu()
    save_checkpoint(out, model, meta)
    model.metadata = meta  # type: ignore[assignment]
    return TrainResult(model, best_epoch, float(best_auc), len(history), float(threshold), history, stopped)
