"""The ``xla`` accelerator (also named ``tpu``): TPUs and other XLA devices through PJRT.

It answers device questions only (is torch_xla there, how many devices does this host have,
which ``torch.device`` is ours); the strategies run the steps. Counting devices must not start
the PJRT runtime in a process that later spawns replicas, so the count is read the way PJRT
itself reads it before start-up (see :meth:`loopkit_xla._runtime.XLARuntime.device_count`).
"""

from __future__ import annotations

import typing as t

import torch

from loopkit.accelerator import Accelerator
from loopkit_xla._runtime import XLARuntime, default_runtime, require_torch_xla

__all__ = ["XLAAccelerator"]


class XLAAccelerator(Accelerator):
    """XLA devices (TPU chips; the CPU or GPUs when ``PJRT_DEVICE`` says so).

    ``devices`` may be ``1`` (one device, this process), the host's device count or ``-1`` /
    ``"auto"`` (one replica per device, started by ``fabric.launch``), or a one-element list
    ``[i]`` choosing device ``i``. PJRT starts a replica on every device of a host or on one, so
    other counts are an error.
    """

    device_type = "xla"
    #: ``strategy="auto"`` on this accelerator means the ``xla`` strategy.
    default_strategy: t.ClassVar[str] = "xla"

    def __init__(self, runtime: XLARuntime | None = None) -> None:
        if runtime is None:
            require_torch_xla("accelerator='xla'")
        self.runtime = runtime if runtime is not None else default_runtime()

    @classmethod
    def is_available(cls) -> bool:
        return default_runtime().available()

    @classmethod
    def device_count(cls) -> int:
        return default_runtime().device_count()

    def auto_device_count(self) -> int:
        return self.runtime.device_count()

    def device(self, index: int = 0) -> torch.device:
        # Never the runtime here: the device of a replica is known only inside it.
        return torch.device("xla", index)

    def parse_devices(self, devices: int | str | t.Sequence[int]) -> list[int]:
        count = self.runtime.device_count()
        if isinstance(devices, str):
            text = devices.strip()
            if text in ("auto", "-1"):
                return list(range(count))
            if text.isdigit():
                devices = int(text)
            elif text.startswith("[") or "," in text:
                devices = [int(p) for p in text.strip("[]").split(",") if p.strip()]
            else:
                raise ValueError(
                    f"devices={devices!r} is not understood by the xla accelerator: pass 1, "
                    f"{count} (every device of this host), -1, 'auto', or [index]"
                )
        if isinstance(devices, bool):
            raise ValueError(f"devices={devices!r}: pass an int, -1, 'auto' or [index]")
        if isinstance(devices, int):
            if devices == -1:
                return list(range(count))
            if devices == 1 or (devices == count and count >= 1):
                return list(range(devices))
            raise ValueError(
                f"devices={devices} on the xla accelerator: PJRT runs one replica on every "
                f"device of a host ({count} here) or a single device, so pass devices=1 or "
                f"devices={count} (or 'auto'); to use fewer devices, set "
                "TPU_PROCESS_BOUNDS/TPU_VISIBLE_CHIPS (TPU) or CPU_NUM_DEVICES/GPU_NUM_DEVICES "
                "before starting Python"
            )
        indices = list(devices)
        if len(indices) == 1 and 0 <= indices[0] < max(count, 1):
            return indices
        if sorted(indices) == list(range(count)):
            return list(range(count))
        raise ValueError(
            f"devices={indices} on the xla accelerator: pass one index below {count} ([i]: a "
            "single device) or every device of this host"
        )
