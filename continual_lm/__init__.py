"""continual_lm: continual learning of language models with parameter-efficient fine-tuning."""
__version__ = "0.1.0"


def load_run(run_dir, *, trust_remote_code: bool = False, allow_unfinished: bool = False):
    """The final model of a run directory: ``load_run(d).predict([...])`` (see continual_lm.api)."""
    from .api import load_run as _load_run

    return _load_run(run_dir, trust_remote_code=trust_remote_code, allow_unfinished=allow_unfinished)
