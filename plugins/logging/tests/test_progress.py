"""Progress bars: drawn on a terminal (rank zero), silent under a pipe."""

from __future__ import annotations

import io
import textwrap
import types
from pathlib import Path

import pytest
from conftest import TRAINING, run_in_pty, run_script

import loopkit
from loopkit_logging import ProgressBar, track


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# The Trainer's bar (prog_bar metrics of TRAINING's regressor, 2 epochs of 4 batches), then the
# track() helper in a Fabric loop, labelled Epoch 2 and 3.
BARS = TRAINING + textwrap.dedent(
    """
    from loopkit_logging import track
    trainer, module = fit(False)
    print("final", round(trainer.progress_bar_metrics["train_loss"].item(), 4), flush=True)
    fabric = loopkit.Fabric(accelerator="cpu")
    for epoch in (2, 3):
        bar = track(range(5), fabric=fabric, epoch=epoch)
        for i in bar:
            bar.set_metrics(acc=1.0 / (i + 1))
    print("done")
    """
)


def test_under_a_pseudo_terminal_the_bars_show_metrics(tmp_path: Path) -> None:
    rc, out = run_in_pty(BARS, tmp_path)
    assert rc == 0, out
    # The Trainer's bar: epoch, batches, rate, and the metrics logged with prog_bar=True.
    assert "Epoch 0" in out and "Epoch 1" in out and "4/4" in out and "it/s" in out
    final = out.split("final")[-1].split()[0]
    assert f"train_loss={float(final):.3g}" in out
    assert "val_loss=" in out
    # track() in a Fabric loop.
    assert "Epoch 2" in out and "Epoch 3" in out and "5/5" in out and "acc=0.2" in out
    assert out.rstrip().endswith("done")


def test_under_a_pipe_nothing_of_them_is_printed(tmp_path: Path) -> None:
    proc = run_script(BARS, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("final ") and proc.stdout.endswith("\ndone\n")
    assert proc.stdout.count("\n") == 2
    assert proc.stderr == ""


def test_other_ranks_draw_nothing_on_a_terminal() -> None:
    # What rank 1 of a DDP run sees: a terminal, and a host that answers global_rank=1.
    stream = FakeTerminal()
    bar = ProgressBar(stream=stream)
    trainer = types.SimpleNamespace(
        current_epoch=0, num_training_batches=2, global_rank=1, progress_bar_metrics={"x": 1.0}
    )
    for hook in ("on_train_start", "on_train_epoch_start", "on_train_batch_end",
                 "on_train_epoch_end", "on_validation_start", "on_validation_end"):
        getattr(bar, hook)(trainer)
    assert not bar.enabled
    assert list(track(range(3), fabric=trainer, stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_plugin_bar_content_per_epoch() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream=stream)
    trainer = types.SimpleNamespace(
        current_epoch=3, num_training_batches=float("inf"), global_rank=0,
        progress_bar_metrics={"loss": 1.5},
    )
    bar.on_train_start(trainer)
    assert bar.enabled
    bar.on_train_epoch_start(trainer)
    for _ in range(3):
        bar.on_train_batch_end(trainer)
    trainer.progress_bar_metrics = {"loss": 1.5, "val_loss": 2.25}
    bar.on_train_epoch_end(trainer)
    out = stream.getvalue()
    assert "Epoch 3" in out and "3it" in out  # no total: a counter, not a fraction
    assert out.rstrip().endswith("val_loss=2.25]")  # epoch-end metrics on the final line


def test_validation_bar_and_refresh_rate() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream=stream, refresh_rate=2)
    trainer = types.SimpleNamespace(
        current_epoch=0, num_training_batches=4, num_val_batches=[2, 1], global_rank=0,
        progress_bar_metrics={},
    )
    bar.on_train_start(trainer)
    bar.on_train_epoch_start(trainer)
    bar.on_train_batch_end(trainer)
    assert bar._train_bar.n == 0  # refreshed every 2 batches
    bar.on_train_batch_end(trainer)
    assert bar._train_bar.n == 2
    bar.on_validation_start(trainer)
    assert bar._val_bar.total == 3
    for _ in range(3):
        bar.on_validation_batch_end()
    assert bar._val_bar.n == 3
    trainer.progress_bar_metrics = {"val_acc": 0.75}
    bar.on_validation_end(trainer)
    assert bar._val_bar is None
    bar.on_exception()
    assert bar._train_bar is None
    out = stream.getvalue()
    assert "Validation" in out and "val_acc=0.75" in out


def test_disabled_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream=stream)
    trainer = types.SimpleNamespace(current_epoch=0, num_training_batches=2, global_rank=0)
    bar.on_train_start(trainer)
    bar.on_train_epoch_start(trainer)
    bar.on_train_batch_end(trainer)
    bar.on_train_epoch_end(trainer)
    assert not bar.enabled and stream.getvalue() == ""
    items = list(track(range(3), stream=stream))
    assert items == [0, 1, 2] and stream.getvalue() == ""


def test_by_name_and_bad_input() -> None:
    fabric = loopkit.Fabric(accelerator="cpu", plugins=["progress_bar"])
    assert isinstance(fabric.get_plugin("progress_bar"), ProgressBar)
    with pytest.raises(ValueError, match="refresh_rate=-1"):
        ProgressBar(refresh_rate=-1)


def test_track_shows_the_last_values_set_on_its_final_line() -> None:
    import torch

    stream = FakeTerminal()
    bar = track([10, 20, 30], stream=stream, desc="warm-up")
    seen = []
    for item in bar:
        seen.append(item)
        bar.set_metrics({"loss": torch.tensor(item / 10)}, lr=0.5)
    assert seen == [10, 20, 30]
    final = stream.getvalue().rstrip().splitlines()[-1].split("\r")[-1]
    assert final.startswith("warm-up: 100%") and "3/3" in final
    assert final.endswith("loss=3, lr=0.5]")
