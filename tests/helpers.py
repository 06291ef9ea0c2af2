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
