"""`cmir-trt train`: train a CMIR variant on a cohort folder and write a checkpoint."""

from __future__ import annotations

import argparse

HELP = "train a CMIR model (AdamW, class-balanced loss, augmentation, early stopping on internal-validation AUC)"


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Hyper-parameters shared by `train` and `ablate` (defaults: TrainConfig)."""
    from ..train.config import TrainConfig

    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate, cosine-annealed (default {d.lr})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default {d.weight_decay})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"early stopping: epochs without internal-validation AUC gain (default {d.patience})")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"ROI size S (default {d.image_size})")
    p.add_argument("--depth", type=int, default=d.depth, choices=(26, 38, 50), help=f"(default {d.depth})")
    p.add_argument("--width", type=float, default=d.width, help=f"channel width multiplier (default {d.width})")
    p.add_argument("--cmam-dim", type=int, default=d.cmam_dim, help=f"CMAM attention width (default {d.cmam_dim})")
    p.add_argument("--cmam-heads", type=int, default=d.cmam_heads, help=f"(default {d.cmam_heads})")
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"(default {d.dropout})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"torch CPU threads; fixed for reproducibility (default {d.threads})")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--noise", type=float, default=d.noise,
                   help=f"augmentation: Gaussian noise, sigma ~ U(0, NOISE) per phase (default {d.noise})")
    p.add_argument("--resolution", type=float, default=d.resolution,
                   help="augmentation: half the cases down-/up-sampled by U(1, 1+RESOLUTION) "
                        f"(default {d.resolution})")
    p.add_argument("--no-augment", action="store_true", help="no flips, rotations, intensity jitter, noise or "
                                                             "resolution changes")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def config_from_args(args: argparse.Namespace, variant: str):  # -> TrainConfig (lazy import)
    from ..train.config import TrainConfig

    aug = {"noise": args.noise, "resolution": args.resolution}
    if args.no_augment:
        aug = {"flip": False, "rotate_deg": 0.0, "intensity_jitter": 0.0, "noise": 0.0, "resolution": 0.0}
    return TrainConfig(variant=variant, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, seed=args.seed, patience=args.patience,
                       image_size=args.image_size, depth=args.depth, width=args.width, cmam_dim=args.cmam_dim,
                       cmam_heads=args.cmam_heads, dropout=args.dropout, threads=args.threads, device=args.device,
                       **aug)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="cohort folder (cases, clinical.csv, manifest.csv)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt); its resume state goes to OUT.resume")
    p.add_argument("--variant", default="full", choices=("S1", "M1", "M2", "M3", "full"),
                   help="model variant (default full)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.resume if a matching one exists")
    p.add_argument("--mask-label", type=int, default=None,
                   help="the tumour's label in multi-label masks (stored with the model's preprocessing parameters)")
    add_train_options(p)


def run(args: argparse.Namespace) -> int:
    from ..train import train_from_directory

    cfg = config_from_args(args, args.variant)
    log = (lambda s: None) if args.quiet else None
    r = train_from_directory(args.data, cfg, args.out, resume=args.resume, progress=False if args.quiet else None,
                             log=log, mask_label=args.mask_label)
    meta = r.model.metadata  # type: ignore[attr-defined]
    syn = " (synthetic)" if meta["training_data"].get("synthetic") else ""
    print(f"wrote {args.out}: {cfg.variant}, best epoch {r.best_epoch}/{r.epochs_run}, internal-validation "
          f"AUC{syn} {r.best_auc:.4f}, threshold {r.threshold:.4f} (Youden's J on the internal split)")
    return 0
