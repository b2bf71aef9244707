"""Two DDP processes on one terminal: one run folder, one set of lines, one progress bar."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from conftest import read_csv, run_in_pty, scalars

pytest.importorskip("loopkit_ddp")

SCRIPT = textwrap.dedent(
    """
    import torch, loopkit
    from torch.utils.data import DataLoader, TensorDataset


    class Regressor(loopkit.LoopModule):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


    if __name__ == "__main__":
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(64, 3), torch.randn(64, 1))
        trainer = loopkit.Trainer(
            accelerator="cpu", strategy="ddp", devices=2, max_epochs=2, log_every_n_steps=1,
            logger=["tensorboard", "csv", "console"], enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(Regressor(), DataLoader(data, batch_size=8))
        print(f"rank {trainer.global_rank} finished", flush=True)
    """
)


@pytest.mark.distributed
def test_only_rank_zero_writes_prints_and_draws(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    rc, out = run_in_pty("import runpy; runpy.run_path('train.py', run_name='__main__')", tmp_path)
    assert rc == 0, out
    out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)  # colours of the readable log lines
    assert "rank 0 finished" in out and "rank 1 finished" in out
    # 64 samples over 2 ranks in batches of 8: 4 steps per epoch.
    assert out.count("hyperparameters") == 1 and out.count("run finished") == 1
    assert all(out.count(f"step={s} ") == 1 for s in range(8))
    assert "Epoch 1" in out and "4/4" in out and "train_loss=" in out
    assert out.count("Epoch 0:   0%") == 1  # one bar was started: rank 1 drew none
    runs = sorted(p.name for p in (tmp_path / "loopkit_logs").iterdir())
    assert runs == ["version_0"]
    log_dir = tmp_path / "loopkit_logs" / "version_0"
    _, rows = read_csv(log_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [str(s) for s in range(8)]
    assert [s for s, _ in scalars(log_dir, "train_loss")] == list(range(8))
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
