"""Checkpoints that survive a kill at any moment.

Each checkpoint is a directory `step-NNNNNNN/` written under a temporary name and renamed; the
pointer files `last` and `best` name the current ones and are replaced atomically after the
directory is complete. Older directories are removed only after the pointer moved on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from llmctl.errors import UsageError
from llmctl.fsutil import atomic_write_json, atomic_write_text, building_folder

STATE = "state.json"


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(root: Path, model, optimizer, state: dict[str, Any], pointers: tuple[str, ...] = ("last",),
                     keep: int = 1) -> Path:
    """Save model, optimizer, RNG and loop state as step-N/, then point `pointers` at it."""
    final, tmp = _names(root, state)
    # A full disk mid-save: the half-written step is removed and the pointers still name the last good one.
    with building_folder(tmp, f"the checkpoint {final}", 3 * _nbytes(model),
                         hint=f"the last good checkpoint in {root} is kept (--resume auto); free some space first"):
        _begin(root, state)
        _save_weights(model, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        return _finish(root, tmp, final, state, pointers, keep)


def _nbytes(model) -> int:
    """Bytes of the trainable weights: with the optimizer's two moments, about what a checkpoint writes."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def write_sharded_checkpoint(root: Path, model, optimizer, state: dict[str, Any], pointers: tuple[str, ...],
                             keep: int, *, main: bool, barrier) -> None:
    """The same step-N/ directory from a sharded (FSDP) model: every process writes its shards of
    weights and optimizer into it (torch.distributed.checkpoint), then the main process alone adds
    RNG and state and renames it; a kill at any moment leaves the pointers on a complete checkpoint."""
    from llmctl.training.distributed import save_sharded

    final, tmp = _begin(root, state) if main else _names(root, state)
    barrier()
    save_sharded(tmp, model, optimizer)
    barrier()
    if main:
        _finish(root, tmp, final, state, pointers, keep)
    barrier()


def is_sharded(path: Path) -> bool:
    from llmctl.training.distributed import SHARDED

    return (path / SHARDED).is_dir()


def _names(root: Path, state: dict[str, Any]) -> tuple[Path, Path]:
    name = f"step-{state['step']:07d}"
    return root / name, root / f".{name}.tmp"


def _begin(root: Path, state: dict[str, Any]) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = _names(root, state)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return final, tmp


def _finish(root: Path, tmp: Path, final: Path, state: dict[str, Any], pointers: tuple[str, ...], keep: int) -> Path:
    torch.save(_rng_state(), tmp / "rng.pt")
    atomic_write_json(tmp / STATE, state)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for pointer in pointers:
        atomic_write_text(root / pointer, final.name + "\n")
    _prune(root, keep)
    return final


def _save_weights(model, path: Path) -> None:
    """All weights when all train (pretraining); only the trainable ones when most are frozen (LoRA),
    so a fine-tuning checkpoint is megabytes, not a copy of the base model."""
    from safetensors.torch import save_file, save_model

    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        save_model(model, str(path))  # handles tied embeddings
    else:
        save_file({n: p.detach().contiguous() for n, p in params.items() if p.requires_grad}, str(path))


def _load_weights(model, path: Path, device: str) -> None:
    from safetensors.torch import load_file, load_model

    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        load_model(model, str(path), device=device)
        return
    state = load_file(str(path), device=device)
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise UsageError(f"checkpoint {path.parent} does not match this model (missing {missing[0]})",
                         hint="resume with the same model and settings")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def _prune(root: Path, keep: int) -> None:
    """Remove step directories that no pointer names, keeping the newest `keep`."""
    named = {(root / p).read_text().strip() for p in ("last", "best") if (root / p).is_file()}
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for path in steps[:-keep] if keep > 0 else steps:
        if path.name not in named:
            shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def find_checkpoint(root: Path, which: str = "last") -> Path | None:
    pointer = root / which
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE).is_file() else None


def check_run_start(name: str | None, resume: str | None, run_dir: Path) -> None:
    """Before any work: a name the registry would refuse, or nothing to resume, fails now, not after training."""
    from llmctl.registry import check_name

    if name is not None:
        check_name(name)
    resolve_resume(resume, run_dir / "checkpoints")


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """--resume auto (the run's last checkpoint, if any) or a checkpoint directory."""
    if not resume:
        return None
    if resume == "auto":  # nothing to resume is said, not papered over by silently starting again
        found = find_checkpoint(root)
        if found is None:
            raise UsageError(f"--resume auto: no checkpoint in {root} to resume from",
                             hint="drop --resume to start a new run")
        return found
    path = Path(resume).expanduser()
    if path.is_dir() and not (path / STATE).is_file():  # a run or checkpoints directory
        for candidate in (path / "checkpoints", path):
            found = find_checkpoint(candidate)
            if found:
                return found
    if not (path / STATE).is_file():
        raise UsageError(f"--resume {resume}: no checkpoint there", hint="use --resume auto or a step-N directory")
    return path


def read_checkpoint(path: Path, model, device: torch.device) -> tuple[dict[str, Any], dict | None, dict[str, Any]]:
    """Load weights into `model`; return (loop state, optimizer state, RNG state). A sharded
    checkpoint returns only state and RNG: its weights and optimizer load once the model is sharded
    (distributed.load_sharded)."""
    rng = torch.load(path / "rng.pt", weights_only=True)
    state = json.loads((path / STATE).read_text())
    if is_sharded(path):
        return state, None, rng
    _load_weights(model, path / "model.safetensors", str(device))
    optimizer_state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    return state, optimizer_state, rng


restore_rng = _set_rng_state
