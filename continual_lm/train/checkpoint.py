"""A run is a directory. This module owns its layout, its lock, its atomic writes and its integrity checks.

    RUN_DIR/
      run.json                          what makes the directory a continual_lm run: the identity of its
                                        configuration and the hashes of its data, recorded when it started
                                        (train/run_record.py); written after config.yaml, under the lock
      config.yaml                       the resolved configuration (paths absolute)
      stream.json                       the stream's task definitions without examples (data/stream.py): what
                                        predict/export/merge need after the run moved away from its data
      preset.json                       with --preset: what it set, from which source, what the user's values
                                        replaced and what the paper does not give (presets/__init__.py)
      state.json                        progress: per phase whether trained, its matrix row, timings
      checkpoints/blobs/<sha256>.safetensors
                                        tensors, each file written once and named by the sha256 of its bytes
      checkpoints/phase_00/             after each phase, written to a temporary folder and renamed:
        manifest.json                     each blob the phase uses: its size and the tensors it supplies (with
                                          each tensor's own sha256); the sha256 + size of method_state.json
        method_state.json                 method metadata
      results.json, report.md, *.png    at the end
      comparison/                       written by `continual-lm report RUN_DIR` (eval/comparison.py), if asked
      .lock                             held (flock) by the process that writes the run, for as long as it runs

A phase checkpoint holds every parameter that has ever been trainable plus the method's extra state, but a tensor
whose bytes equal one an earlier checkpoint stored is not written again: the manifest refers to the earlier blob.
So a LoRA frozen after its task is stored once, however many later checkpoints contain it. A phase writes at most two
blobs: tensors seen for the first time, and new versions of tensors stored before (which tend to keep changing).
Blobs no kept checkpoint refers to are removed by ``--keep-checkpoints last``.
Checkpoint folders of the first format (``trainable.safetensors`` + ``method_state.safetensors`` in the folder,
manifest ``"format": 1``) still load. Nothing is ever unpickled: safetensors and JSON only.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import ContinualLMError
from ..io_utils import atomic_write_bytes, atomic_write_json, sha256_file
from .run_record import sha256_of

FORMAT_VERSION = 2
RUN_RECORD = "run.json"
LOCK = ".lock"
# What a run writes at its top level (methods add *.json / *.png / *.md); anything else is the user's.
RUN_FOLDERS = ("checkpoints", "predictions", "tracking")
RUN_FILE_SUFFIXES = (".json", ".yaml", ".md", ".png")
FIRST_FORMAT_FILES = ("trainable.safetensors", "method_state.safetensors", "method_state.json")


def is_temporary(name: str) -> bool:
    """Names the run directory uses while writing (atomic writes, checkpoint folders being written or removed)."""
    return name.startswith(".") and (".tmp" in name or ".del-" in name)


@dataclass
class Contents:
    """What a directory holds, as far as running there is concerned."""

    kind: str  # "absent" | "file" | "empty" (nothing but a lock or temporaries) | "run" | "other"
    foreign: list[str] = field(default_factory=list)  # entries a run does not write (the user's)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (two tensors with the same digest are interchangeable)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # ---- one writer at a time --------------------------------------------------------------------------------
    def _open_lock(self, create: bool) -> int | None:
        """The lock file's descriptor, opened without following a symbolic link (a ``.lock`` linking elsewhere
        would otherwise be truncated and overwritten with a pid); None if it does not exist and ``create`` is off."""
        lock = self.path / LOCK
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | (os.O_CREAT if create else 0)
        try:
            fd = os.open(lock, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as err:
            if err.errno == errno.ELOOP or lock.is_symlink():
                raise ContinualLMError(f"{lock} is a symbolic link; a run's lock file must be a plain file. Remove "
                                       f"it (no continual_lm run creates a link there)") from None
            raise ContinualLMError(f"cannot open the lock file {lock}: {err.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ContinualLMError(f"{lock} is not a plain file; a run's lock file must be one")
        return fd

    def acquire_lock(self) -> None:
        """Hold an exclusive lock on RUN_DIR/.lock until this process ends (or ``release_lock``): a second process
        that tries to write the same run directory (a resume started twice, two runs started together on one new
        directory) gets a clear error instead of mixing its files with the first one's."""
        if self._lock_fd is not None or sys.platform == "win32":
            return
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = self._open_lock(create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ContinualLMError(f"run directory {self.path} is in use by another process (pid {owner}); wait for "
                                   f"it to finish or stop it before resuming or overwriting this run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the file releases the flock
            self._lock_fd = None

    @property
    def holds_lock(self) -> bool:
        return self._lock_fd is not None

    def is_locked_by_another_process(self) -> bool:
        if sys.platform == "win32" or not self.path.is_dir():
            return False
        import fcntl

        fd = self._open_lock(create=False)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the probe's lock
        return False

    # ---- what the directory holds ------------------------------------------------------------------------------
    def contents(self) -> Contents:
        """Whether the directory is absent, a file, empty, a continual_lm run or something else; and which of its
        entries a run does not write (``foreign``: --overwrite refuses to delete those)."""
        if not self.path.exists():
            return Contents("absent")
        if not self.path.is_dir():
            return Contents("file")
        entries = [e for e in self.path.iterdir() if e.name != LOCK and not is_temporary(e.name)]
        if not entries:
            return Contents("empty")
        foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in entries if not _run_entry(e))
        return Contents("run" if self.is_run() else "other", foreign)

    def is_run(self) -> bool:
        """A continual_lm run: it has our run.json, or (runs of earlier versions, or a run killed before it wrote
        run.json) a config.yaml that is a continual_lm configuration."""
        try:
            record = json.loads((self.path / RUN_RECORD).read_text())
            if isinstance(record, dict) and "continual_lm_run" in record:
                return True
        except (OSError, ValueError):
            pass
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return False
        from ..config import RunConfig

        names = {f for f in RunConfig.__dataclass_fields__}
        return isinstance(config, dict) and {"method", "benchmark"} <= set(config) <= names

    def clear(self) -> None:
        """Remove everything but the lock (held by this process): --overwrite of a run, after every check."""
        assert self.holds_lock or sys.platform == "win32"
        for entry in self.path.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # ---- layout ----------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def record_path(self) -> Path:
        return self.path / RUN_RECORD

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

    def predictions_path(self, name: str) -> Path:
        return self.path / "predictions" / f"{name}.json"

    @property
    def stream_path(self) -> Path:
        return self.path / "stream.json"

    def write_stream(self, definition: dict[str, Any]) -> None:
        atomic_write_json(self.stream_path, definition)

    def read_stream(self) -> dict[str, Any] | None:
        """The definition of the run's stream (data/stream.py), None for a run written before it was kept; checked
        against the sha256 run.json recorded for it."""
        if not self.stream_path.exists():
            return None
        try:
            data = json.loads(self.stream_path.read_text())
        except (OSError, ValueError) as err:
            raise ContinualLMError(f"{self.stream_path} is corrupted ({err})") from None
        recorded = (self.read_record() or {}).get("stream_sha256")
        if recorded is not None and sha256_of(data) != recorded:
            raise ContinualLMError(f"{self.stream_path} differs from the stream the run started with (its sha256 in "
                                   f"{self.record_path}); restore it or use the run's data instead")
        return data

    @property
    def blobs_path(self) -> Path:
        return self.path / "checkpoints" / "blobs"

    def checkpoint_path(self, row: int) -> Path:
        return self.path / "checkpoints" / f"phase_{row:02d}"

    # ---- the run's record (run.json) ---------------------------------------------------------------------------
    def read_record(self) -> dict[str, Any] | None:
        """run.json, or None for a run written before run.json existed."""
        if not self.record_path.exists():
            return None
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError) as err:
            raise ContinualLMError(f"{self.record_path} is corrupted ({err}); it records the configuration and "
                                   f"data the run started with") from None
        if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
                and isinstance(record.get("data"), dict)):
            raise ContinualLMError(f"{self.record_path} is malformed: expected the keys 'config' and 'data' "
                                   f"(mappings) that continual_lm writes")
        return record

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.record_path, record)

    # ---- progress state --------------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"format": FORMAT_VERSION, "phases": {}, "timing": {"train_s": 0.0, "eval_s": 0.0}}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as err:
            raise ContinualLMError(f"{self.state_path} is corrupted ({err}); remove the run directory or start "
                                   f"again with --overwrite") from None
        problem = _state_problem(state)
        if problem:
            raise ContinualLMError(f"{self.state_path} is malformed ({problem}); it was edited or not written by "
                                   f"continual_lm. Remove the run directory or start again with --overwrite")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, row: int, trainable: dict[str, torch.Tensor], method_tensors: dict[str, torch.Tensor],
                        method_meta: dict[str, Any]) -> Path:
        """Write phase ``row``'s checkpoint: new or changed tensors into one new blob, the others referred to in
        the blobs earlier checkpoints wrote; then the manifest, and the folder renamed into place."""
        tensors = {f"trainable/{k}": v for k, v in trainable.items()}
        tensors.update({f"method/{k}": v for k, v in method_tensors.items()})
        stored, blob_sizes = self._stored_tensors()
        blobs: dict[str, dict[str, Any]] = {}
        new, new_digests = {}, {}
        for key, value in tensors.items():
            value = value.detach().contiguous().cpu()
            digest = tensor_sha256(value)
            name = stored.get((key, digest))
            if name is None:
                new[key], new_digests[key] = value, digest
            else:
                blobs.setdefault(name, {"bytes": blob_sizes[name], "tensors": {}})["tensors"][key] = digest
        known = {key for key, _ in stored}
        # Tensors seen before in another version keep changing (a shared selector, full fine-tuning), first-seen
        # ones often freeze (a new task's LoRA): two blobs, so that a later checkpoint that still needs a frozen
        # tensor does not keep the outdated versions of the changing ones alive.
        for group in ([k for k in new if k not in known], [k for k in new if k in known]):
            if group:
                name, size = self._write_blob({k: new[k] for k in group})
                blobs.setdefault(name, {"bytes": size, "tensors": {}})["tensors"].update(
                    {k: new_digests[k] for k in group})
        final = self.checkpoint_path(row)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta_bytes = json.dumps(method_meta, indent=1).encode()
        atomic_write_bytes(tmp / "method_state.json", meta_bytes)
        atomic_write_json(tmp / "manifest.json", {
            "format": FORMAT_VERSION, "row": row, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "blobs": dict(sorted(blobs.items())),
            "files": {"method_state.json": {"sha256": hashlib.sha256(meta_bytes).hexdigest(),
                                            "bytes": len(meta_bytes)}}})
        if final.exists():  # a phase trained again (killed after its checkpoint, before state.json said so)
            self._remove_folder(final)
        os.replace(tmp, final)
        return final

    def _write_blob(self, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
        """Serialize in memory (so that a full disk is an OSError, not a silently short file), name the bytes by
        their sha256, write them atomically unless that blob exists already."""
        data = safetensors_bytes(tensors)
        name = hashlib.sha256(data).hexdigest()
        path = self.blobs_path / f"{name}.safetensors"
        if not (path.exists() and path.stat().st_size == len(data)):
            atomic_write_bytes(path, data)
        return name, len(data)

    def _manifests(self) -> dict[Path, dict[str, Any] | None]:
        """Every phase folder's manifest (None where it cannot be read)."""
        found = {}
        for folder in sorted((self.path / "checkpoints").glob("phase_*")):
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
                found[folder] = manifest if isinstance(manifest, dict) else None
            except (OSError, ValueError):
                found[folder] = None
        return found

    def _stored_tensors(self) -> tuple[dict[tuple[str, str], str], dict[str, int]]:
        """(tensor key, tensor sha256) -> blob, and blob -> bytes, over the checkpoints on disk whose blobs exist."""
        stored, sizes = {}, {}
        for manifest in self._manifests().values():
            if not manifest or manifest.get("format") != FORMAT_VERSION or _manifest_problem(manifest):
                continue
            for name, blob in manifest["blobs"].items():
                if (self.blobs_path / f"{name}.safetensors").is_file():
                    sizes[name] = blob["bytes"]
                    stored.update({(key, digest): name for key, digest in blob["tensors"].items()})
        return stored, sizes

    def load_checkpoint(self, row: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        """(trainable tensors, method tensors, method metadata) of phase ``row``. Every file is verified against
        the manifest (size and sha256; a blob's name is its sha256) before anything is loaded."""
        folder = self.checkpoint_path(row)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            raise ContinualLMError(f"checkpoint {folder} has no manifest.json; it is incomplete. Start the run again "
                                   f"with --overwrite")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            raise ContinualLMError(f"checkpoint manifest {manifest_path} is corrupted") from None
        if not isinstance(manifest, dict) or manifest.get("format") not in (1, FORMAT_VERSION):
            raise ContinualLMError(f"checkpoint manifest {manifest_path} is malformed (expected a mapping with "
                                   f"\"format\": 1 or {FORMAT_VERSION})")
        if manifest.get("row", row) != row:
            raise ContinualLMError(f"checkpoint manifest {manifest_path} belongs to phase {manifest.get('row')!r}, "
                                   f"not to phase {row}")
        if manifest["format"] == 1:
            return self._load_first_format(folder, manifest)
        problem = _manifest_problem(manifest)
        if problem:
            raise ContinualLMError(f"checkpoint manifest {manifest_path} is malformed ({problem})")
        _verify(folder / "method_state.json", manifest["files"]["method_state.json"], manifest_path)
        for name, blob in manifest["blobs"].items():
            _verify(self.blobs_path / f"{name}.safetensors", {"bytes": blob["bytes"], "sha256": name}, manifest_path)
        tensors = {}
        for name, blob in manifest["blobs"].items():
            keys = list(blob["tensors"])
            with safe_open(self.blobs_path / f"{name}.safetensors", framework="pt") as handle:
                missing = sorted(set(keys) - set(handle.keys()))
                if missing:
                    raise ContinualLMError(f"checkpoint blob {name}.safetensors lacks {missing[:3]} that "
                                           f"{manifest_path} expects in it; the checkpoint is corrupted")
                tensors.update({key: handle.get_tensor(key) for key in keys})
        trainable = {k[len("trainable/"):]: v for k, v in tensors.items() if k.startswith("trainable/")}
        method = {k[len("method/"):]: v for k, v in tensors.items() if k.startswith("method/")}
        meta = json.loads((folder / "method_state.json").read_text())
        return trainable, method, meta

    @staticmethod
    def _load_first_format(folder: Path, manifest: dict[str, Any]):
        files = manifest.get("files")
        manifest_path = folder / "manifest.json"
        if not isinstance(files, dict) or set(files) != set(FIRST_FORMAT_FILES) \
                or not all(isinstance(v, dict) for v in files.values()):
            raise ContinualLMError(f"checkpoint manifest {manifest_path} is malformed: it must list exactly "
                                   f"{', '.join(FIRST_FORMAT_FILES)} with their sha256 and size")
        for name, info in files.items():
            _verify(folder / name, info, manifest_path)
        trainable = load_file(folder / "trainable.safetensors")
        tensors = load_file(folder / "method_state.safetensors")
        meta = json.loads((folder / "method_state.json").read_text())
        return trainable, tensors, meta

    def prune_checkpoints(self, keep_row: int) -> None:
        """--keep-checkpoints last: remove every phase checkpoint but ``keep_row``'s, then the blobs no remaining
        checkpoint refers to. Each folder is renamed away before it is deleted, so no half-deleted checkpoint ever
        carries a final name."""
        for folder in (self.path / "checkpoints").glob("phase_*"):
            if folder != self.checkpoint_path(keep_row):
                self._remove_folder(folder)
        self.remove_unreferenced_blobs()

    def remove_unreferenced_blobs(self) -> None:
        manifests = self._manifests()
        if any(m is None or (m.get("format") == FORMAT_VERSION and _manifest_problem(m)) for m in manifests.values()):
            return  # a checkpoint that cannot be read may still need its blobs: keep them all
        referenced = {name for m in manifests.values() if m.get("format") == FORMAT_VERSION for name in m["blobs"]}
        for blob in self.blobs_path.glob("*.safetensors"):
            if blob.stem not in referenced:
                blob.unlink(missing_ok=True)

    @staticmethod
    def _remove_folder(folder: Path) -> None:
        trash = folder.with_name(f".{folder.name}.del-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove_stale_temporaries(self) -> None:
        """What a killed run left under temporary names, and blobs of a checkpoint it did not finish."""
        root = self.path / "checkpoints"
        for folder in [*root.glob(".phase_*.tmp-*"), *root.glob(".phase_*.del-*")]:
            shutil.rmtree(folder, ignore_errors=True)
        for path in [*self.path.glob(".*.tmp"), *self.blobs_path.glob(".*.tmp"), *self.path.glob("predictions/.*.tmp")]:
            path.unlink(missing_ok=True)
        if self.blobs_path.is_dir():
            self.remove_unreferenced_blobs()


def _run_entry(entry: Path) -> bool:
    if entry.is_dir() and not entry.is_symlink():
        return entry.name in RUN_FOLDERS or is_comparison_folder(entry)
    return entry.is_file() and entry.suffix in RUN_FILE_SUFFIXES


# The folder `continual-lm report` writes into a run or sweep directory (eval/comparison.py writes it; it counts as
# part of the run, as long as it holds nothing else).
COMPARISON_FOLDER = "comparison"
COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.tex", "comparison.html", "comparison.png",
                    "comparison_ap_box.png")


def is_comparison_folder(path: Path) -> bool:
    """A ``comparison/`` folder that holds nothing but what ``continual-lm report`` writes (and its temporaries)."""
    if path.name != COMPARISON_FOLDER or not path.is_dir() or path.is_symlink():
        return False
    return all(entry.is_file() and (entry.name in COMPARISON_FILES or entry.name.startswith("."))
               for entry in path.iterdir())


def sweep_contents(path: Path) -> Contents:
    """A sweep's parent directory: "run" when every entry is a run directory without foreign entries (or an empty
    folder), else "other" with the offending entries."""
    found = RunDir(path).contents()
    if found.kind not in ("run", "other"):
        return found
    foreign = []
    for entry in sorted(path.iterdir()):
        if entry.name == LOCK or is_temporary(entry.name) or is_comparison_folder(entry):
            continue
        child = RunDir(entry).contents() if entry.is_dir() and not entry.is_symlink() else Contents("file")
        if child.kind == "empty":
            continue
        if child.kind != "run":
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
        else:
            foreign += [f"{entry.name}/{name}" for name in child.foreign]
    return Contents("other" if foreign else "run", foreign)


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict) or not isinstance(state.get("phases"), dict):
        return "expected a mapping with a 'phases' mapping"
    for key, phase in state["phases"].items():
        if not (isinstance(phase, dict) and key.isdigit()):
            return f"phase {key!r} is not a mapping of a numbered phase"
        if not isinstance(phase.get("trained", False), bool) or not isinstance(phase.get("row"), (list, type(None))):
            return f"phase {key}: 'trained' must be true/false and 'row' a list or null"
    return None


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    blobs, files = manifest.get("blobs"), manifest.get("files")
    if not isinstance(blobs, dict) or not blobs or not isinstance(files, dict):
        return "expected a non-empty 'blobs' mapping and a 'files' mapping"
    for name, blob in blobs.items():
        if not (isinstance(blob, dict) and isinstance(blob.get("bytes"), int) and isinstance(blob.get("tensors"), dict)
                and blob["tensors"] and all(isinstance(d, str) for d in blob["tensors"].values())):
            return f"blob {name!r} needs its size in bytes and the tensors it supplies with their sha256"
    info = files.get("method_state.json")
    if set(files) != {"method_state.json"} or not isinstance(info, dict):
        return "'files' must list method_state.json with its sha256 and size"
    return None


def _verify(path: Path, info: Any, manifest_path: Path) -> None:
    if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or not isinstance(info.get("sha256"), str):
        raise ContinualLMError(f"checkpoint manifest {manifest_path} is malformed: {path.name} needs its sha256 and "
                               f"size")
    if not path.is_file():
        raise ContinualLMError(f"checkpoint file {path} is missing")
    if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
        raise ContinualLMError(f"checkpoint file {path} is truncated or corrupted (its sha256 does not match "
                               f"{manifest_path}); refusing to load it")
