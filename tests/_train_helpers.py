"""Small seeded arrays for training tests (no cohort folder needed): a learnable toy task at S = 32."""

from __future__ import annotations

import numpy as np


def toy_arrays(n: int = 30, s: int = 32, seed: int = 0, n_internal: int = 10):
    """art/pv [n,3,s,s] float32 with a bright blob in MVI+ cases, clinical [n,8], labels, splits."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(np.int64)
    n_train = n - n_internal
    y[:2] = [0, 1]
    y[n_train:n_train + 2] = [0, 1]
    yy, xx = np.mgrid[:s, :s]
    blob = np.exp(-((yy - s / 2) ** 2 + (xx - s / 2) ** 2) / (2 * (s / 8) ** 2)).astype(np.float32)
    art = rng.normal(size=(n, 3, s, s)).astype(np.float32) + 1.5 * y[:, None, None, None] * blob
    pv = rng.normal(size=(n, 3, s, s)).astype(np.float32) + 0.5 * y[:, None, None, None] * blob
    clinical = rng.normal(size=(n, 8)).astype(np.float32)
    clinical[:, 2] += y
    splits = np.array(["train"] * n_train + ["internal"] * n_internal)
    return art.astype(np.float32), pv.astype(np.float32), clinical, y, splits
