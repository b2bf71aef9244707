"""loopkit-ema-example: an exponential moving average of the weights, as a loopkit plugin.

Installed, it registers the entry point ``ema`` in the group ``loopkit.plugins``, so
``Trainer(plugins=["ema"])`` and ``Fabric(plugins=["ema"])`` find it by name. See ``README.md``
and the tutorial in loopkit's ``docs/plugins.md``.
"""

from loopkit_ema_example.ema import EMA

__all__ = ["EMA"]
__version__ = "0.1.0"
