"""Serving CMIR on Triton Inference Server.

* `server`: find a `tritonserver` (on PATH, or the one bundled in the `nvidia-pytriton` wheel), prepare its Python
  backend so the stub runs in this environment, start it on chosen ports, wait until ready, stop it cleanly.
* `models`: the Python-backend models of an exported repository (`cmir` on tensors, `cmir_preprocess` on NIfTI
  bytes); the repository's `model.py` files only import them. They run inside Triton's stub process.
"""

from __future__ import annotations

from .server import ServerDist, ServerError, ServerNotFoundError, TritonServer, find_server, free_port

__all__ = ["ServerDist", "ServerError", "ServerNotFoundError", "TritonServer", "find_server", "free_port"]
