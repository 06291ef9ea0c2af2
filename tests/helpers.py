"""Shared test helpers: a tiny, fast run configuration on the demo stream."""
from continual_lm.config import RunConfig


def tiny_config(tmp_path, method="inclora", model="tiny-random-llama", **overrides) -> RunConfig:
    settings = dict(
        benchmark="demo", method=method, model=model, seed=3, output_dir=str(tmp_path / "run"),
        max_train_per_task=8, max_test_per_task=4, batch_size=4, eval_batch_size=8, max_input_length=64,
        max_target_length=6, lr=5e-3, progress=False,
    )
    settings.update(overrides)
    config = RunConfig(**settings)
    config.validate()
    return config


def record_after_each_phase(monkeypatch, take=None) -> list:
    """Record ``take(runner)`` after each phase's training, just before its evaluation (default: a copy of every
    model parameter). Returns the list the records are appended to."""
    from continual_lm.train import loop

    take = take or (lambda runner: {n: p.detach().clone() for n, p in runner.model.named_parameters()})
    records = []
    original = loop.ContinualRunner.evaluate_phase

    def spy(self, phase):
        records.append(take(self))
        return original(self, phase)

    monkeypatch.setattr(loop.ContinualRunner, "evaluate_phase", spy)
    return records
