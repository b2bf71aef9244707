"""Casting helpers shared by every precision: floating tensors in nested data, the default dtype.

Nothing here keeps state; each helper is the identity on anything it does not understand.
"""

from __future__ import annotations

import collections.abc as c
import contextlib
import typing as t

import torch

__all__ = ["cast_floating", "default_dtype"]


def cast_floating(data: t.Any, dtype: torch.dtype) -> t.Any:
    """``data`` with every floating-point tensor cast to ``dtype``.

    Walks dicts, lists, tuples and namedtuples; integer and boolean tensors, and any other
    object, are returned as they are. Tensors already in ``dtype`` are not copied.
    """
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() and data.dtype != dtype:
            return data.to(dtype)
        return data
    if isinstance(data, dict):
        items = [(k, cast_floating(v, dtype)) for k, v in data.items()]
        try:
            return type(data)(items)
        except TypeError:  # a dict subclass with another constructor (defaultdict): plain dict
            return dict(items)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(cast_floating(v, dtype) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(cast_floating(v, dtype) for v in data)
    return data


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> c.Iterator[None]:
    """Make ``dtype`` torch's default floating dtype inside the block; restore it after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
