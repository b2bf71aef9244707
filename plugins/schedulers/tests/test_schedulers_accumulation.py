"""With gradient accumulation, a step-interval scheduler counts optimizer steps, not batches."""

from __future__ import annotations

import typing as t

import pytest
from _schedulers_util import Net, batches, fit, lr_of, same_weights, twin
from torch.optim import SGD
from torch.optim.lr_scheduler import StepLR

pytest.importorskip("loopkit_accumulation")


def test_step_interval_under_accumulation_steps_once_per_window() -> None:
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [{"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 2}]

    module = Net(configure)
    ref = twin(module)
    run = fit(module, epochs=2, accumulate_grad_batches=3)
    assert run.global_step == 6  # windows of 3, 3 and 1 batches per epoch

    # By hand: mean gradient of each window, step at its end, schedule every second step.
    (opt,), (config,) = ref.configure_optimizers()
    expected, steps = [], 0
    data = batches()
    for _ in range(2):
        for batch_idx, batch in enumerate(data):
            expected.append((lr_of(opt),))
            window = min(3, len(data) - (batch_idx - batch_idx % 3))
            (ref.loss(0, batch) / window).backward()
            if (batch_idx + 1) % 3 == 0 or batch_idx == len(data) - 1:
                opt.step()
                opt.zero_grad()
                steps += 1
                if steps % 2 == 0:
                    config["scheduler"].step()
    assert module.lrs == expected
    assert [row[0] for row in module.lrs[7:]] == [0.5] * 3 + [0.25] * 4
    assert same_weights(module, ref)
