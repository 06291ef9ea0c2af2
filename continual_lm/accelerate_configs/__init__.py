"""The accelerate launch configurations shipped with the package (DDP, DeepSpeed ZeRO-2/3, FSDP2), one YAML file each.

`continual-lm accelerate-config` lists them, `continual-lm accelerate-config NAME` writes NAME.yaml into the current
folder (or --output), `--path` prints where the installed file is; then
``accelerate launch --config_file NAME.yaml -m continual_lm run ...``. docs/accelerate.md says what each one is for
and how it was tested.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ContinualLMError, unknown_choice

CONFIG_ROOT = Path(__file__).parent


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_ROOT.glob("*.yaml"))


def config_path(name: str) -> Path:
    """The installed file of configuration ``name`` ("ddp_cpu" or "ddp_cpu.yaml")."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if stem not in config_names():
        raise ContinualLMError(f"accelerate-config: {unknown_choice('configuration', stem, config_names())}")
    return CONFIG_ROOT / f"{stem}.yaml"


def config_summary(name: str) -> str:
    """The first line of the file's leading comment: what the configuration runs."""
    first = config_path(name).read_text().splitlines()[0]
    return re.split(r"[.:]", first.lstrip("# "), maxsplit=1)[0]


def write_config(name: str, output: str | Path | None = None) -> Path:
    """Copy configuration ``name`` to ``output`` (default ./NAME.yaml); an existing file is never replaced."""
    from ..io_utils import atomic_write_text

    source = config_path(name)
    dest = Path(output) if output else Path(source.name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise ContinualLMError(f"accelerate-config: {dest} exists; it is left as it is: choose another --output or "
                               f"remove it yourself")
    return atomic_write_text(dest, source.read_text())
