"""loopkit-precision: mixed, half and double precision for loopkit, as precision plugins.

Users name a precision (``Fabric(precision="bf16-mixed")``); the registry imports this package
then. The classes are public for users who want an instance with options
(``FP16MixedPrecision(scaler=torch.amp.GradScaler("cuda", init_scale=2.0**10))``).
"""

from __future__ import annotations

from loopkit_precision.mixed import BF16MixedPrecision, FP16MixedPrecision, MixedPrecision
from loopkit_precision.true import (
    BF16TruePrecision,
    DoublePrecision,
    FP16TruePrecision,
    TruePrecision,
)

__all__ = [
    "BF16MixedPrecision",
    "BF16TruePrecision",
    "DoublePrecision",
    "FP16MixedPrecision",
    "FP16TruePrecision",
    "MixedPrecision",
    "TruePrecision",
]
