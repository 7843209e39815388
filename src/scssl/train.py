"""The one training loop: AdamW, validation split, early stopping, checkpoints, resume, AMP.

Every method trains through :class:`Trainer`; it only calls ``method.loss(batch)`` and
``method.after_optimizer_step(progress)``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from scssl.checkpoint import (
    load_json, load_tensors, optimizer_from_tensors, optimizer_to_tensors, save_json, save_tensors,
)
from scssl.data import CellData
from scssl.methods.base import SSLMethod

log = logging.getLogger("scssl")


@dataclass
class TrainConfig:
    """Training hyper-parameters.

    Attributes
    ----------
    max_epochs
        Upper bound on passes over the training cells.
    batch_size
        Cells per optimiser step.
    lr, weight_decay
        AdamW settings.
    validation_fraction
        Cells held out to monitor the loss (none below 50 cells).
    patience
        Stop after this many epochs without validation improvement (``0`` disables).
    warmup_epochs
        Linear learning-rate warm-up, then cosine decay to 10% of ``lr``.
    seed
        Seeds the split, batch order, masks and augmentations: same seed, same model (CPU).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``.
    amp
        bf16 autocast on CUDA.
    num_threads
        CPU threads torch trains with (``None``: ``OMP_NUM_THREADS`` when set, else torch's
        current setting); see :func:`cpu_threads`.
    """

    max_epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.1
    patience: int = 15
    warmup_epochs: int = 5
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_threads: int | None = None


@contextmanager
def cpu_threads(num_threads: int | None = None) -> Iterator[None]:
    """Run the block with torch on ``num_threads`` CPU threads (``None``: ``OMP_NUM_THREADS``
    when it is set, else leave torch alone), then restore the previous count.

    Why: scanpy's numba kernels (normalisation, HVGs, scaling, neighbours) start an OpenMP pool
    of one thread per CPU, ignoring ``OMP_NUM_THREADS``, and torch shares that pool setting; so
    after any scanpy preprocessing a process limited to one thread trains on every CPU, and two
    such processes on a 2-core machine ran 17x slower each (results README, "Threads"). Works as
    a decorator too.
    """
    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        num_threads = int(env) if env.isdigit() and int(env) > 0 else None
    elif num_threads < 1:
        raise ValueError(f"num_threads must be a positive number of threads, got {num_threads}")
    before = torch.get_num_threads()
    if num_threads is None or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but no CUDA device is available; use device='cpu'")
    return torch.device(device)


def split_cells(n_cells: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of cell indices (no validation below 50 cells)."""
    order = np.random.default_rng(seed).permutation(n_cells)
    n_val = int(round(n_cells * fraction)) if n_cells >= 50 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class Trainer:
    """Fits one :class:`~scssl.methods.base.SSLMethod` on one :class:`~scssl.data.CellData`.

    Parameters
    ----------
    method
        The method to train (its input statistics are fitted here).
    data
        Training cells.
    config
        Training hyper-parameters.
    checkpoint_dir
        Folder for per-epoch checkpoints (``None``: no checkpoints).
    """

    def __init__(self, method: SSLMethod, data: CellData, config: TrainConfig, checkpoint_dir: str | Path | None = None) -> None:
        self.method, self.data, self.config = method, data, config
        self.device = resolve_device(config.device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.train_idx, self.val_idx = split_cells(data.n_cells, config.validation_fraction, config.seed)
        if len(self.train_idx) < 2:
            raise ValueError(f"need at least 2 training cells, got {len(self.train_idx)}")
        self.history: list[dict[str, float]] = []

    # ---- helpers ---------------------------------------------------------------------------------
    def _batches(self, index, shuffle: bool, generator: torch.Generator | None):
        codes = self.data.batch_codes
        drop_last = shuffle  # tiny last batches hurt contrastive losses and batch norm
        for cells, counts in self.data.batches(
            self.config.batch_size, index, shuffle=shuffle, generator=generator,
            drop_last=drop_last, device=self.device,
        ):
            batch_index = None if codes is None else torch.as_tensor(codes[cells], device=self.device)
            yield counts, batch_index

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _lr_factor(self, step: int, total: int, warmup: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _validation_loss(self) -> float | None:
        if len(self.val_idx) == 0:
            return None
        self.method.eval()
        # A fixed generator makes validation masks identical across epochs, so losses compare.
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
        total = torch.zeros((), device=self.device)
        n = 0
        with torch.no_grad(), self._autocast():
            for counts, batch_index in self._batches(self.val_idx, False, None):
                batch = self.method.prepare(counts, batch_index, generator)
                total += self.method.loss(batch).total.float() * counts.shape[0]
                n += counts.shape[0]
        self.method.train()
        return float(total) / n

    # ---- checkpoints -----------------------------------------------------------------------------
    def _save_checkpoint(self, epoch: int, optimizer, best_state, state: dict) -> None:
        assert self.checkpoint_dir is not None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in self.method.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.shuffle"] = self.shuffle_generator.get_state()
        sha = save_tensors(self.checkpoint_dir / "last.safetensors", tensors)
        save_json(self.checkpoint_dir / "last.json", {
            "epoch": epoch, "sha256": sha, "method": self.method.name,
            "method_config": self.method.config.to_dict(), "train_config": asdict(self.config),
            "optimizer": opt_meta, "history": self.history, **state,
        })

    def _load_checkpoint(self, optimizer) -> tuple[int, dict, dict]:
        assert self.checkpoint_dir is not None
        meta = load_json(self.checkpoint_dir / "last.json")
        current = json.loads(json.dumps(self.method.config.to_dict()))  # as JSON stored it
        if meta["method"] != self.method.name or meta["method_config"] != current:
            raise ValueError(
                f"checkpoint in {self.checkpoint_dir} is for a different method or hyper-parameters; "
                "resume with the same settings, or start afresh with resume=False"
            )
        tensors = load_tensors(self.checkpoint_dir / "last.safetensors", meta["sha256"])
        self.method.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.generator"])
        self.shuffle_generator.set_state(tensors["rng.shuffle"])
        best_state = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("best.")}
        self.history = meta["history"]
        return meta["epoch"] + 1, best_state, {"best_loss": meta["best_loss"], "bad_epochs": meta["bad_epochs"]}

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True) -> list[dict[str, float]]:
        """Train, keep the weights with the best validation loss, return the per-epoch history."""
        with cpu_threads(self.config.num_threads):
            return self._fit(resume, progress)

    def _fit(self, resume: bool, progress: bool) -> list[dict[str, float]]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.method.to(self.device)
        # Masks and augmentations draw on the device; the cell order is drawn on the host.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW(self.method.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        n_train = len(self.train_idx)
        steps_per_epoch = max(1, n_train // cfg.batch_size)
        total_steps = cfg.max_epochs * steps_per_epoch
        warmup_steps = min(cfg.warmup_epochs * steps_per_epoch, total_steps // 2)

        start_epoch, best_loss, bad_epochs = 0, math.inf, 0
        if resume:
            if self.checkpoint_dir is None or not (self.checkpoint_dir / "last.json").exists():
                raise FileNotFoundError(
                    f"resume=True but no checkpoint in {self.checkpoint_dir}; run once without resume"
                )
            start_epoch, best_state, state = self._load_checkpoint(optimizer)
            best_loss, bad_epochs = state["best_loss"], state["bad_epochs"]
            if cfg.patience and bad_epochs >= cfg.patience:
                start_epoch = cfg.max_epochs  # that run had already stopped early: nothing to do
            log.info("resuming at epoch %d", start_epoch)
        else:
            self.method.transform.fit_stats(
                counts for counts, _ in self._batches(self.train_idx, False, None)
            )
            self.method.setup(counts for counts, _ in self._batches(self.train_idx, False, None))
            best_state = copy.deepcopy(self.method.state_dict())

        self.method.train()
        bar = tqdm(range(start_epoch, cfg.max_epochs), disable=not progress, desc=f"scssl {self.method.name}",
                   unit="epoch", initial=start_epoch, total=cfg.max_epochs)
        for epoch in bar:
            running = torch.zeros((), device=self.device)
            n_steps = 0
            for counts, batch_index in self._batches(self.train_idx, True, self.shuffle_generator):
                step = epoch * steps_per_epoch + n_steps
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * self._lr_factor(step, total_steps, warmup_steps)
                with self._autocast():
                    batch = self.method.prepare(counts, batch_index, self.generator)
                    out = self.method.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                optimizer.step()
                self.method.after_optimizer_step(min(1.0, (step + 1) / total_steps))
                running += out.total.detach().float()  # no host sync per step
                n_steps += 1
            train_loss = float(running) / max(1, n_steps)
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} at epoch {epoch}; lower lr (now {cfg.lr})"
                )
            val_loss = self._validation_loss()
            monitored = train_loss if val_loss is None else val_loss
            self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            if not math.isfinite(best_loss) or monitored < best_loss - 1e-4 * abs(best_loss):
                best_loss, bad_epochs = monitored, 0
                best_state = copy.deepcopy(self.method.state_dict())
            else:
                bad_epochs += 1
            bar.set_postfix(train=f"{train_loss:.4f}", val="-" if val_loss is None else f"{val_loss:.4f}")
            if self.checkpoint_dir is not None:
                self._save_checkpoint(epoch, optimizer, best_state, {"best_loss": best_loss, "bad_epochs": bad_epochs})
            if cfg.patience and bad_epochs >= cfg.patience:
                log.info("early stopping at epoch %d (best loss %.4f)", epoch, best_loss)
                break
        bar.close()
        self.method.load_state_dict(best_state)
        self.method.eval()
        return self.history
