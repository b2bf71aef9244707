"""``import loopkit`` stays cheap and changes nothing: checked in fresh interpreters.

Speed itself is measured by ``python -X importtime`` (see docs/architecture.md), not here: these
tests check what is imported, which is what makes it slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import loopkit

FORBIDDEN_PREFIXES = ("torch._dynamo", "torch._inductor", "tensorboard", "torch.utils.tensorboard")


def _run(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loopkit_imports_neither_torch_nor_plugins():
    result = _run(
        """
        import json, sys
        before = set(sys.modules)
        import loopkit
        new = sorted(set(sys.modules) - before)
        print(json.dumps(new))
        """
    )
    assert "torch" not in result
    assert not [m for m in result if m.startswith("loopkit_")]
    assert "structlog" not in result  # the kernel's logging is quiet and lazy
    assert "blinker" not in result


def test_every_public_name_imports_nothing_torch_defers():
    """The whole public API loaded on top of ``import torch`` adds no deferred torch module."""
    names = sorted(loopkit._EXPORTS)
    result = _run(
        f"""
        import json, sys
        import torch
        before = set(sys.modules)
        import loopkit
        for name in {names!r}:
            getattr(loopkit, name)
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    assert "loopkit.fabric" in result  # the names really were loaded
    bad = [m for m in result if m.startswith(FORBIDDEN_PREFIXES)]
    assert bad == []
    # torch.distributed submodules that `import torch` itself leaves unimported stay so.
    distributed = [m for m in result if m.startswith("torch.distributed")]
    assert distributed == []
    assert not [m for m in result if m.startswith("loopkit_")]
    assert "structlog" not in result


def test_importing_loopkit_changes_nothing_global():
    result = _run(
        """
        import json, signal, sys, warnings, atexit
        import torch
        state = lambda: {
            "filters": len(warnings.filters),
            "excepthook": repr(sys.excepthook),
            "sigint": repr(signal.getsignal(signal.SIGINT)),
            "sigterm": repr(signal.getsignal(signal.SIGTERM)),
            "compile": repr(torch.compile),
            "atexit": atexit._ncallbacks(),
            "default_dtype": str(torch.get_default_dtype()),
            "grad": torch.is_grad_enabled(),
        }
        before = state()
        import loopkit
        for name in loopkit.__all__:
            getattr(loopkit, name)
        print(json.dumps([before, state()]))
        """
    )
    before, after = result
    assert before == after
