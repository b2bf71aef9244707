"""ConsoleLogger: readable lines, JSON lines with structured fields."""

from __future__ import annotations

import io
import json
import types

import pytest
from conftest import fabric_run

from loopkit.plugins import registry
from loopkit_logging import ConsoleLogger


def test_json_lines_parse_with_the_expected_fields() -> None:
    out = io.StringIO()
    logger = ConsoleLogger(json=True, stream=out)
    logger.log_hyperparams({"lr": 0.1, "opt": {"name": "adam"}})
    losses = fabric_run(logger, steps=6)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0]["event"] == "hyperparameters"
    assert records[0]["hparams"] == {"lr": 0.1, "opt/name": "adam"}
    metrics = [r for r in records if r["event"] == "metrics"]
    assert [r["step"] for r in metrics] == list(range(6))
    assert [r["metrics"]["loss"] for r in metrics] == losses
    assert "grad" not in metrics[3]["metrics"] and "grad" in metrics[4]["metrics"]
    assert all(r["level"] == "info" and "timestamp" in r for r in records)
    assert records[-1]["event"] == "run finished" and records[-1]["status"] == "success"


def test_epoch_comes_from_the_metrics_or_the_trainer() -> None:
    out = io.StringIO()
    logger = ConsoleLogger(json=True, stream=out)
    logger.log_metrics({"loss": 0.5, "epoch": 2}, step=10)
    logger.on_fit_start(trainer=types.SimpleNamespace(current_epoch=5, global_rank=0))
    logger.log_metrics({"loss": 0.25}, step=11)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["step"], first["epoch"], first["metrics"]) == (10, 2, {"loss": 0.5})
    assert (second["step"], second["epoch"], second["metrics"]) == (11, 5, {"loss": 0.25})


def test_readable_lines_show_each_field() -> None:
    out = io.StringIO()
    logger = ConsoleLogger(stream=out)
    logger.log_metrics({"loss": 0.123456789, "epoch": 1}, step=7)
    line = out.getvalue().strip()
    assert "metrics" in line and "step=7" in line and "epoch=1" in line
    assert "loss=0.1235" in line  # 4 significant digits by default
    assert "\x1b[" not in line  # no colour codes when the stream is not a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_json_by_name_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPKIT_LOG_JSON", "1")
    logger = registry().create("logger", "console")
    assert isinstance(logger, ConsoleLogger) and logger.json is True
    monkeypatch.setenv("LOOPKIT_LOG_JSON", "0")
    assert registry().create("logger", "console").json is False


def test_default_stream_is_stdout_and_rank_zero_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ConsoleLogger(json=True).log_metrics({"loss": 1.0}, step=0)
    assert json.loads(capsys.readouterr().out)["metrics"] == {"loss": 1.0}
    monkeypatch.setenv("RANK", "1")
    ConsoleLogger(json=True).log_metrics({"loss": 1.0}, step=0)
    assert capsys.readouterr().out == ""


def test_the_console_logger_leaves_structlog_configuration_alone() -> None:
    import structlog

    before = structlog.get_config()
    ConsoleLogger(json=True, stream=io.StringIO()).log_metrics({"x": 1.0}, step=0)
    assert structlog.get_config() == before


def test_bad_settings() -> None:
    with pytest.raises(TypeError, match="json='yes'"):
        ConsoleLogger(json="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="digits=0"):
        ConsoleLogger(digits=0)
