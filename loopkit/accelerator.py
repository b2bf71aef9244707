"""Accelerators: which kind of device a run uses, how many there are, and which one is ours.

The kernel embeds ``cpu``, ``cuda`` and ``mps``; plugins add others (``xla``). An accelerator
only answers questions about devices; moving things and running steps is the strategy's job.
"""

from __future__ import annotations

import typing as t

import torch

from loopkit.plugins import Plugin

__all__ = ["CPUAccelerator", "CUDAAccelerator", "MPSAccelerator", "Accelerator"]


class Accelerator(Plugin):
    """A device type. Subclasses say whether it is available and how many devices there are."""

    kind = "accelerator"
    device_type: t.ClassVar[str] = "cpu"

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int:
        return 1

    def device(self, index: int = 0) -> torch.device:
        """The ``torch.device`` of local device ``index``."""
        return torch.device(self.device_type, index)

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` current for this process (CUDA: ``torch.cuda.set_device``)."""

    def parse_devices(self, devices: int | str | t.Sequence[int]) -> list[int]:
        """Turn the user's ``devices`` argument into local device indices, validating it."""
        if isinstance(devices, str):
            text = devices.strip()
            if text == "auto":
                return list(range(max(1, self.auto_device_count())))
            if text == "-1":
                return list(range(self.device_count()))
            if "," in text:
                devices = [int(p) for p in text.split(",") if p.strip()]
            elif text.isdigit():
                devices = int(text)
            else:
                raise ValueError(
                    f"devices={devices!r} is not understood: pass an int, a list of indices, "
                    "'auto', or a comma-separated string like '0,1'"
                )
        if isinstance(devices, bool) or (isinstance(devices, int) and devices < -1):
            raise ValueError(f"devices={devices!r}: pass a positive int, -1 (all), or 'auto'")
        if isinstance(devices, int):
            if devices == -1:
                return list(range(self.device_count()))
            if devices == 0:
                raise ValueError("devices=0: pass at least 1 device, or 'auto'")
            indices = list(range(devices))
        else:
            indices = list(devices)
            if not indices or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in indices
            ):
                raise ValueError(
                    f"devices={devices!r}: a list of devices holds device indices (ints), at "
                    "least one"
                )
            if len(set(indices)) != len(indices):
                raise ValueError(f"devices={indices!r} names a device twice; name each once")
        self._check(indices)
        return indices

    def auto_device_count(self) -> int:
        return self.device_count()

    def _check(self, indices: list[int]) -> None:
        count = self.device_count()
        if any(i >= count or i < 0 for i in indices):
            asked = len(indices) if indices == list(range(len(indices))) else indices
            raise ValueError(
                f"devices={asked!r} asks for {self.device_type} devices this machine does not "
                f"have (it has {count}); pass at most {count} devices, indices below {count}, "
                "or 'auto'"
            )


class CPUAccelerator(Accelerator):
    """The CPU. ``devices=N`` means N processes, each on the CPU."""

    device_type = "cpu"

    def device(self, index: int = 0) -> torch.device:
        return torch.device("cpu")

    def auto_device_count(self) -> int:
        return 1

    def _check(self, indices: list[int]) -> None:
        pass  # any number of CPU processes is allowed


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs through ``torch.cuda``."""

    device_type = "cuda"

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    @classmethod
    def device_count(cls) -> int:
        return torch.cuda.device_count()

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)


class MPSAccelerator(Accelerator):
    """Apple silicon GPUs through ``torch.backends.mps``."""

    device_type = "mps"

    @classmethod
    def is_available(cls) -> bool:
        return torch.backends.mps.is_available()

    @classmethod
    def device_count(cls) -> int:
        return 1 if cls.is_available() else 0
