"""Distributed training: sharding, the launcher checks, and real two-process torchrun jobs (Gloo, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_counts

from scssl import SSLModel
from scssl.distributed import Context, init, shard

WORKER = Path(__file__).with_name("ddp_worker.py")
GATHER_WORKER = Path(__file__).with_name("ddp_gather_worker.py")


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Two processes on this machine, one thread each, through PyTorch's own launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def ranks(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_shards_are_disjoint_equal_and_shared_by_every_process():
    index = np.arange(10, 111)  # 101 cells over 2 processes: one sits out
    parts = [shard(index, Context(rank, 2), seed=0, epoch=3) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 50
    assert not set(parts[0]) & set(parts[1])
    assert set(parts[0]) | set(parts[1]) <= set(index)
    assert np.array_equal(parts[0], shard(index, Context(0, 2), seed=0, epoch=3))  # same on every call
    assert not np.array_equal(parts[0], shard(index, Context(0, 2), seed=0, epoch=4))  # new order per epoch


def test_distributed_true_without_a_launcher_names_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init(True)
    assert not init(None).active  # the default stays single-process


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted 4-epoch two-process mae run, and one killed at epoch 2 then resumed."""
    root = tmp_path_factory.mktemp("ddp")
    whole, resumed = root / "whole", root / "resumed"
    done = torchrun(str(WORKER), str(whole), "mae", "4", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = torchrun(str(WORKER), str(resumed), "mae", "4", "stop@2", cwd=root)
    assert killed.returncode != 0 and not (resumed / "rank0.json").exists()
    again = torchrun(str(WORKER), str(resumed), "mae", "4", "resume", cwd=root)
    assert again.returncode == 0, again.stderr[-3000:]
    return {"whole": whole, "resumed": resumed}


def test_processes_end_with_the_same_weights_and_learn(ddp_runs):
    first, second = ranks(ddp_runs["whole"])
    assert first["world_size"] == 2
    assert first["weights"] == second["weights"]  # gradients were averaged every step
    assert first["history"] == second["history"]  # losses are reduced over both processes
    losses = [epoch["val_loss"] for epoch in first["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert first["knn_f1"] > 0.7  # the three synthetic groups separate in the embedding


def test_batch_wide_losses_span_every_process(tmp_path):
    """Two processes with half a batch each take the step one process takes with all of it."""
    result = torchrun(str(GATHER_WORKER), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in ranks(tmp_path):
        for method, gaps in rank.items():
            assert max(gaps["gathered"]) < 1e-4, method  # loss, gradients, running statistics
            # Without gathering, each process's loss sees only its half: the check can tell.
            assert max(gaps["per_process"]) > 1e-3, method


@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_processes_end_with_the_same_buffers(tmp_path, method):
    """MoCo's queue gets every process's keys; SimCLR's projector batch norm keeps running
    statistics of every process's rows. Per process, both would differ between the ranks."""
    result = torchrun(str(WORKER), str(tmp_path), method, "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = ranks(tmp_path)
    assert first["weights"] == second["weights"]
    assert first["buffers"] == second["buffers"]


def test_only_rank0_checkpoints_and_a_killed_run_resumes_exactly(ddp_runs):
    meta = json.loads((ddp_runs["whole"] / "checkpoints" / "last.json").read_text())
    assert meta["world_size"] == 2 and meta["epoch"] == 3
    assert sorted(p.name for p in (ddp_runs["whole"] / "checkpoints").iterdir()) == ["last.json", "last.safetensors"]
    whole, resumed = ranks(ddp_runs["whole"])[0], ranks(ddp_runs["resumed"])[0]
    assert resumed["weights"] == whole["weights"]
    assert resumed["history"] == whole["history"]


def test_single_process_refuses_a_two_process_checkpoint(ddp_runs, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = SSLModel(make_counts(n_cells=400, n_genes=60, seed=3), method="mae", hidden=(64,), latent_dim=8,
                     target_sum=None)  # the workers' settings
    with pytest.raises(ValueError, match="2 process"):
        model.fit(max_epochs=4, batch_size=32, patience=0, progress=False,
                  checkpoint_dir=ddp_runs["whole"] / "checkpoints", resume=True)


def test_cli_pretrain_under_torchrun_writes_one_model(tmp_path):
    make_counts(n_cells=300, n_genes=50, seed=1).write_h5ad(tmp_path / "cells.h5ad")
    result = torchrun("-m", "scssl", "pretrain", "cells.h5ad", "--out", "model", "--method", "simclr",
                      "--epochs", "2", "--batch-size", "32", "--set", "hidden=[64]", "--set", "latent_dim=8",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved SSLModel") == 1  # rank 0 alone writes and reports
    model = SSLModel.load(tmp_path / "model")
    assert len(model.history) == 2
    assert model.embed(make_counts(n_cells=300, n_genes=50, seed=1)).shape == (300, 8)
    assert json.loads((tmp_path / "model" / "checkpoints" / "last.json").read_text())["world_size"] == 2
