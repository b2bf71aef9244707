"""Shared set-up of loopkit-xla's tests.

When torch_xla is installed, the XLA device is started before any test runs: torch's autograd
engine sizes its per-device queues the first time any backward runs, so a CPU backward before
the first XLA device exists would break every later XLA backward in the process (docs/xla.md).
The XLA tests compare against eager CPU results, so they run on PJRT's CPU client.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

HAS_TORCH_XLA = importlib.util.find_spec("torch_xla") is not None


def pytest_configure(config: pytest.Config) -> None:
    if not HAS_TORCH_XLA or os.environ.setdefault("PJRT_DEVICE", "CPU") != "CPU":
        return
    import torch_xla

    torch_xla.device()
