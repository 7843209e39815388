"""The one training loop: AdamW, validation split, early stopping, checkpoints, resume, AMP, DDP.

Every method trains through :class:`Trainer`; it only calls ``method.prepare``,
``method.loss(batch)`` and ``method.after_optimizer_step(progress)``. Launched by ``torchrun``,
the same loop trains with DistributedDataParallel (see :mod:`scssl.distributed`); the federated
client (:mod:`scssl.federated`) runs it for its local epochs.
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

from scssl import distributed
from scssl.checkpoint import (
    load_json,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_json,
    save_tensors,
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
        Linear learning-rate warm-up, then the schedule.
    lr_schedule
        ``"cosine"`` (decay to 10% of ``lr`` over ``max_epochs``) or ``"constant"``.
    seed
        Seeds the split, batch order, masks and augmentations: same seed, same model (CPU).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``.
    amp
        bf16 autocast (matrix products in bfloat16; weights and optimiser state in float32).
        ``None``: on CUDA only; ``True``: on every device, the CPU included (CPUs with AMX or
        AVX-512 BF16 multiply in bf16 natively; elsewhere it can be slower than float32);
        ``False``: never.
    num_threads
        CPU threads torch trains with (``None``: ``OMP_NUM_THREADS`` when set, else torch's
        current setting); see :func:`cpu_threads`.
    restore_best
        End with the weights of the best epoch (validation loss, else training loss);
        ``False`` keeps the last epoch's.
    distributed
        DistributedDataParallel over the processes ``torchrun`` started: ``None`` (default)
        whenever it started more than one, ``True`` to require it, ``False`` never. ``batch_size``
        is then per process.
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
    amp: bool | None = None
    num_threads: int | None = None
    lr_schedule: str = "cosine"
    restore_best: bool = True
    distributed: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            # One-cell steps leave batch norm, contrastive negatives and batch statistics undefined.
            raise ValueError(f"batch_size must be at least 2 cells, got {self.batch_size}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")


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


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global random streams for the block, then give the caller back the states it
    had (the CPU's, and ``device``'s when it is a GPU): a seeded run is reproducible, and the
    user's own stream continues as if scssl had not run. Only the GPU in use is restored, so a
    process of a multi-GPU run opens no context on the others."""
    gpus = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(seed)
        yield


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; a CUDA device asked for must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but no CUDA device is available; use device='cpu'")
    return torch.device(device)


def split_cells(n_cells: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of cell indices (no validation below 50 cells)."""
    order = np.random.default_rng(seed).permutation(n_cells)
    n_val = round(n_cells * fraction) if n_cells >= 50 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def span_processes(method: SSLMethod, active: bool) -> None:
    """Let the method's batch-wide losses and batch norms see every process's rows (``active``)
    or only their own: the modules with a ``spans_processes`` flag."""
    for module in method.modules():
        if hasattr(module, "spans_processes"):
            module.spans_processes = active


class _LossStep(torch.nn.Module):
    """``method.prepare`` + ``method.loss`` as one forward, so DistributedDataParallel sees the
    whole step and averages every gradient the loss produced."""

    def __init__(self, method: SSLMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, counts: torch.Tensor, batch_index, generator) -> torch.Tensor:
        return self.method.loss(self.method.prepare(counts, batch_index, generator)).total


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
        Folder for per-epoch checkpoints (``None``: no checkpoints). In a distributed run only
        rank 0 writes; every rank reads it to resume.
    """

    def __init__(self, method: SSLMethod, data: CellData, config: TrainConfig, checkpoint_dir: str | Path | None = None) -> None:
        self.method, self.data, self.config = method, data, config
        self.device = resolve_device(config.device)
        self.dist = distributed.init(config.distributed, self.device)
        if self.dist.active and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.train_idx, self.val_idx = split_cells(data.n_cells, config.validation_fraction, config.seed)
        if len(self.train_idx) < 2 * self.dist.world_size:
            raise ValueError(
                f"the data holds {data.n_cells} cells, {len(self.train_idx)} of them for training "
                f"after the validation split; training needs at least 2 per process "
                f"({self.dist.world_size} here): pass more cells"
            )
        self.history: list[dict[str, float]] = []
        self.step_module: torch.nn.Module = _LossStep(method)

    # ---- helpers ---------------------------------------------------------------------------------
    def _batches(self, index, shuffle: bool, generator: torch.Generator | None, drop_last: bool = False):
        codes = self.data.batch_codes
        for cells, counts in self.data.batches(
            self.config.batch_size, index, shuffle=shuffle, generator=generator,
            drop_last=drop_last, device=self.device,
        ):
            batch_index = None if codes is None else torch.as_tensor(codes[cells], device=self.device)
            yield counts, batch_index

    def _autocast(self):
        enabled = self.device.type == "cuda" if self.config.amp is None else self.config.amp
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _lr_factor(self, step: int, total: int, warmup: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if self.config.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _epoch_cells(self, epoch: int) -> tuple[np.ndarray, bool]:
        """(cells, shuffle inside ``data.batches``?) for one training epoch of this process."""
        if not self.dist.active:
            return self.train_idx, True
        return distributed.shard(self.train_idx, self.dist, self.config.seed, epoch), False

    def mean_loss(self, index: np.ndarray) -> float:
        """Mean loss per cell over cells ``index`` with the current weights (eval mode, no
        gradients, masks from a fixed seed so that calls compare); over every process's share
        in a distributed run."""
        if self.dist.active:
            index = np.asarray(index)[self.dist.rank :: self.dist.world_size]
        was_training = self.method.training
        self.method.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss × cells, cells
        with torch.no_grad(), self._autocast():
            for counts, batch_index in self._batches(index, False, None):
                batch = self.method.prepare(counts, batch_index, generator)
                sums[0] += self.method.loss(batch).total.double() * counts.shape[0]
                sums[1] += counts.shape[0]
        self.method.train(was_training)
        total, n = distributed.all_reduce_sum(sums, self.dist).tolist()
        return total / n if n else math.nan

    def _fit_input_stats(self) -> None:
        """The input transform's target sum (when it comes from the data) and per-gene
        statistics over the training cells: each process reads its share (all of them in one
        process) and the histograms and moments are summed over processes (same result
        everywhere)."""
        transform = self.method.transform
        share = self.train_idx[self.dist.rank :: self.dist.world_size]
        if transform.target_from_data:
            histogram = transform.library_histogram(counts for counts, _ in self._batches(share, False, None))
            transform.set_target(distributed.all_reduce_sum(histogram, self.dist))
        n, total, sq_total = transform.moments(counts for counts, _ in self._batches(share, False, None))
        sums = distributed.all_reduce_sum(torch.cat([total, sq_total, total.new_tensor([n])]), self.dist)
        n_genes = total.shape[0]
        transform.set_stats(int(sums[-1]), sums[:n_genes], sums[n_genes : 2 * n_genes])

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
            "world_size": self.dist.world_size,
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
        if meta.get("world_size", 1) != self.dist.world_size:
            raise ValueError(
                f"checkpoint in {self.checkpoint_dir} was written by a run of {meta.get('world_size', 1)} "
                f"process(es); resume it with the same number (this run has {self.dist.world_size})"
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
    def fit(self, resume: bool = False, progress: bool = True, fit_inputs: bool = True) -> list[dict[str, float]]:
        """Train, keep the weights with the best validation loss, return the per-epoch history.

        Parameters
        ----------
        resume
            Continue from ``checkpoint_dir``'s last checkpoint.
        progress
            Show a progress bar (rank 0 only in a distributed run).
        fit_inputs
            Fit the input statistics and run ``method.setup`` on the training cells first;
            ``False`` when they are already set (a federated round gets them from the server).
        """
        with cpu_threads(self.config.num_threads), seeded(self.config.seed, self.device):
            span_processes(self.method, self.dist.active)
            try:
                return self._fit(resume, progress and self.dist.is_main, fit_inputs)
            finally:
                span_processes(self.method, False)

    def train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    total_steps: int, warmup_steps: int) -> float:
        """One pass over this process's training cells; returns the mean training loss (over
        every process in a distributed run). The one step every caller shares."""
        cfg = self.config
        if self.dist.active:  # masks differ between processes, and resuming needs only the epoch
            self.generator.manual_seed(int(np.random.SeedSequence([cfg.seed, self.dist.rank, epoch]).generate_state(1)[0]))
        cells, shuffle = self._epoch_cells(epoch)
        running = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, steps
        n_steps = 0
        # drop_last: tiny last batches hurt contrastive losses and batch norm.
        for counts, batch_index in self._batches(cells, shuffle, self.shuffle_generator, drop_last=True):
            step = epoch * steps_per_epoch + n_steps
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * self._lr_factor(step, total_steps, warmup_steps)
            with self._autocast():
                loss = self.step_module(counts, batch_index, self.generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.method.after_optimizer_step(min(1.0, (step + 1) / total_steps))
            running[0] += loss.detach().double()  # no host sync per step
            n_steps += 1
        running[1] = n_steps
        total, steps = distributed.all_reduce_sum(running, self.dist).tolist()
        return total / max(1.0, steps)

    def _fit(self, resume: bool, progress: bool, fit_inputs: bool) -> list[dict[str, float]]:
        cfg = self.config
        self.method.to(self.device)
        # Masks and augmentations draw on the device; the cell order is drawn on the host.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW(self.method.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, len(self.train_idx) // self.dist.world_size // cfg.batch_size)
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
            if fit_inputs:
                self._fit_input_stats()
                self.method.setup(counts for counts, _ in self._batches(self.train_idx, False, None))
            best_state = copy.deepcopy(self.method.state_dict())
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            # Buffers need no sync per step: input statistics are reduced over processes, gene
            # modules come from the same cells on every process, EMA targets follow identical
            # weights, a MoCo queue receives every process's keys, and batch norm's running
            # statistics come from every process's rows (encoders.BatchNorm1d).
            self.step_module = DistributedDataParallel(
                _LossStep(self.method), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,
            )

        self.method.train()
        bar = tqdm(range(start_epoch, cfg.max_epochs), disable=not progress, desc=f"scssl {self.method.name}",
                   unit="epoch", initial=start_epoch, total=cfg.max_epochs)
        for epoch in bar:
            train_loss = self.train_epoch(epoch, optimizer, steps_per_epoch, total_steps, warmup_steps)
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} at epoch {epoch}; lower lr (now {cfg.lr})"
                )
            val_loss = self.mean_loss(self.val_idx) if len(self.val_idx) else None
            monitored = train_loss if val_loss is None else val_loss
            self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            if not math.isfinite(best_loss) or monitored < best_loss - 1e-4 * abs(best_loss):
                best_loss, bad_epochs = monitored, 0
                if cfg.restore_best:
                    best_state = copy.deepcopy(self.method.state_dict())
            else:
                bad_epochs += 1
            bar.set_postfix(train=f"{train_loss:.4f}", val="-" if val_loss is None else f"{val_loss:.4f}")
            if self.checkpoint_dir is not None and self.dist.is_main:
                self._save_checkpoint(epoch, optimizer, best_state, {"best_loss": best_loss, "bad_epochs": bad_epochs})
            if cfg.patience and bad_epochs >= cfg.patience:
                log.info("early stopping at epoch %d (best loss %.4f)", epoch, best_loss)
                break
        bar.close()
        if cfg.restore_best:
            self.method.load_state_dict(best_state)
        self.method.eval()
        return self.history
