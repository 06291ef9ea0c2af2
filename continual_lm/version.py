"""The package version (its own module, so that modules of the package never import the package's root)."""
__version__ = "0.1.0"


def library_versions() -> dict[str, str]:
    """The versions a run ran with (results.json "versions")."""
    import platform

    import accelerate
    import peft
    import torch
    import transformers

    return {"continual_lm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}
