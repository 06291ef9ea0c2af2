"""A run is a directory. This module owns its layout, its atomic writes and its integrity checks.

    RUN_DIR/
      config.yaml                       fully resolved configuration
      preset.json                       with --preset: what it set, from which source, what the user's values
                                        replaced and what the paper does not give (presets/__init__.py)
      state.json                        progress: per phase whether trained, its matrix row, timings
      checkpoints/phase_00/             after each phase, written to a temporary folder and renamed:
        trainable.safetensors             every parameter that has ever been trainable (never the frozen base)
        method_state.safetensors          method tensors that are not parameters (Fisher, memory, keys, ...)
        method_state.json                 method metadata
        manifest.json                     sha256 + size of each file; verified before anything is loaded
      results.json, report.md, accuracy_matrix.png     at the end
      .lock                             held (flock) by the process that writes the run, for as long as it runs
"""
from __future__ import annotations

import json
import os
import sys
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import ContinualLMError
from ..io_utils import atomic_write_json, sha256_file

FORMAT_VERSION = 1


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_handle = None

    # ---- one writer at a time --------------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Hold an exclusive lock on RUN_DIR/.lock until this process ends (or ``release_lock``): a second process
        that tries to write the same run directory (a resume started twice, a sweep with a repeated output dir)
        gets a clear error instead of pruning or overwriting the first one's checkpoints."""
        if self._lock_handle is not None or sys.platform == "win32":
            return
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise ContinualLMError(f"run directory {self.path} is in use by another process (pid {owner}); wait for "
                                   f"it to finish or stop it before resuming or overwriting this run") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def release_lock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the file releases the flock
            self._lock_handle = None

    def is_locked_by_another_process(self) -> bool:
        if sys.platform == "win32" or not (self.path / ".lock").exists():
            return False
        import fcntl

        with open(self.path / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False

    # ---- layout ----------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def preset_path(self) -> Path:
        return self.path / "preset.json"

    def write_preset(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.preset_path, record)

    def read_preset(self) -> dict[str, Any] | None:
        """The record of the preset applied when the run started (None without a preset)."""
        if not self.preset_path.exists():
            return None
        try:
            return json.loads(self.preset_path.read_text())
        except json.JSONDecodeError as err:
            raise ContinualLMError(f"{self.preset_path} is corrupted ({err})") from None

    def checkpoint_path(self, row: int) -> Path:
        return self.path / "checkpoints" / f"phase_{row:02d}"

    # ---- progress state --------------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"format": FORMAT_VERSION, "phases": {}, "timing": {"train_s": 0.0, "eval_s": 0.0}}
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as err:
            raise ContinualLMError(f"{self.state_path} is corrupted ({err}); remove the run directory or start "
                                   f"again with --overwrite") from None

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, row: int, trainable: dict[str, torch.Tensor], method_tensors: dict[str, torch.Tensor],
                        method_meta: dict[str, Any]) -> Path:
        final = self.checkpoint_path(row)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        save_file({k: v.detach().contiguous().cpu() for k, v in method_tensors.items()},
                  tmp / "method_state.safetensors")
        (tmp / "method_state.json").write_text(json.dumps(method_meta, indent=1))
        files = {}
        for name in ("trainable.safetensors", "method_state.safetensors", "method_state.json"):
            with open(tmp / name, "rb+") as handle:
                os.fsync(handle.fileno())
            files[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        atomic_write_json(tmp / "manifest.json", {"format": FORMAT_VERSION, "row": row, "files": files,
                                                  "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def load_checkpoint(self, row: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        """Verify every file against the manifest, then load (safetensors and JSON only: nothing is unpickled)."""
        folder = self.checkpoint_path(row)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            raise ContinualLMError(f"checkpoint {folder} has no manifest.json; it is incomplete. Start the run again "
                                   f"with --overwrite")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            raise ContinualLMError(f"checkpoint manifest {manifest_path} is corrupted") from None
        for name, info in manifest["files"].items():
            path = folder / name
            if not path.exists():
                raise ContinualLMError(f"checkpoint file {path} is missing")
            if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
                raise ContinualLMError(f"checkpoint file {path} is truncated or corrupted (its sha256 does not match "
                                       f"{manifest_path}); refusing to load it")
        trainable = load_file(folder / "trainable.safetensors")
        tensors = load_file(folder / "method_state.safetensors")
        meta = json.loads((folder / "method_state.json").read_text())
        return trainable, tensors, meta

    def prune_checkpoints(self, keep_row: int) -> None:
        """--keep-checkpoints last: remove every phase checkpoint but ``keep_row``'s."""
        root = self.path / "checkpoints"
        for folder in root.glob("phase_*"):
            if folder != self.checkpoint_path(keep_row):
                shutil.rmtree(folder, ignore_errors=True)

    def remove_stale_temporaries(self) -> None:
        root = self.path / "checkpoints"
        for folder in root.glob(".phase_*.tmp-*"):
            shutil.rmtree(folder, ignore_errors=True)
        for path in self.path.glob(".*.tmp"):
            path.unlink(missing_ok=True)
