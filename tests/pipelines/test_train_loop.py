"""The training loop every family shares: iteration cap, time limit, time budget, losses."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from pipelines.training import TrainLoop


def _model_and_opt() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_runs_its_iterations_and_learns() -> None:
    model, opt = _model_and_opt()
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    loop = TrainLoop("fit", iterations=200, deadline=time.monotonic() + 3600, progress=False, every=10)
    seen = []
    for i in loop:
        loop.step(opt, ((model(x) - y) ** 2).mean(), mse=1.0)
        seen.append(i)
    assert seen == list(range(200)) and loop.done == 200 and not loop.stopped_by_time
    assert len(loop.history["loss"]) == 200 and loop.history["mse"] == [1.0] * 200
    assert loop.final() == pytest.approx(sum(loop.history["loss"][-10:]) / 10)
    assert loop.final() < 0.01 * loop.history["loss"][0]


def test_a_passed_deadline_stops_after_one_iteration_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model, opt = _model_and_opt()
    loop = TrainLoop("fit", iterations=50, deadline=time.monotonic() - 1.0, progress=False)
    with caplog.at_level(logging.WARNING):
        for _ in loop:
            loop.step(opt, model(torch.ones(1, 3)).sum())
    assert loop.done == 1 and loop.stopped_by_time
    assert "fit stopped at the time limit after 1 of 50 iterations" in caplog.text


def test_a_time_budget_runs_until_the_clock_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    model, opt = _model_and_opt()
    loop = TrainLoop("fit", iterations=None, deadline=time.monotonic() + 0.3, progress=False)
    with caplog.at_level(logging.WARNING):
        for _ in loop:
            loop.step(opt, model(torch.ones(1, 3)).sum())
    assert loop.done > 1 and not loop.stopped_by_time and "time limit" not in caplog.text


def test_nothing_recorded_gives_no_final_loss() -> None:
    loop = TrainLoop("fit", iterations=0, deadline=time.monotonic() + 10, progress=False)
    assert list(loop) == [] and loop.final() is None
