"""Federated pre-training with Flower: institutions train one model and keep their cells.

Each institution (a Flower *node*) holds its own AnnData; a server coordinates
(`Flower <https://flower.ai>`_'s Message API, FedAvg). **The server never sees a cell.** What
leaves a node is, once, its gene names, its input kind (raw counts or log-normalised), its
number of cells and, with a ``batch_key``, the names of its batches; once, a histogram of its
cells' library sizes on the shared genes (when the target sum comes from the data); once, the
per-gene moments ``(n, Σx, Σx²)`` of its normalised values on the shared genes; and every
round the model's weights after its local epochs, its number of cells and its mean loss.
Weights, histograms and moments are aggregates, not anonymised: no differential privacy is
added.

The protocol:

1. **Vocabulary.** The server asks every node for its genes and input kind. The model's genes
   are those all nodes share, in the first node's order (simulation: the first dataset;
   deployment: the lowest ``partition-id`` in the nodes' ``--node-config``, else the lowest
   node id). Disagreeing input kinds, or fewer than :data:`MIN_SHARED_GENES` shared genes,
   stop the run with an error naming the nodes.
2. **Input statistics.** With ``target_sum=None`` every node first sends a
   histogram of its log library sizes, and the pooled median becomes the target sum (recorded
   in the hyper-parameters). Then every node sends the moments of its normalised values on
   those genes; the pooled moments set the model's :class:`~scssl.transforms.InputTransform`
   exactly as local training would on all cells together. A method whose ``setup`` needs the
   cells themselves (``mae`` with gene-programme masking and no gene sets computes
   co-expression modules) is refused: pass ``gmt=`` / ``gene_sets=`` or use random masking.
3. **Rounds.** FedAvg: each round the sampled nodes receive the global weights and the model
   description (method, hyper-parameters, genes, input spec, batch key), rebuild the method,
   train ``local_epochs`` with scssl's one training loop (:class:`~scssl.train.Trainer`,
   a fresh AdamW each round, no validation split, constant learning rate within the round) and
   return their weights, averaged in proportion to their cells. The round's learning rate
   follows a cosine from ``lr`` down to 10% of it over the rounds. After each round every node
   reports the averaged model's mean loss on its cells.
4. **Result.** An :class:`~scssl.model.SSLModel`, saved and loaded like a locally trained
   one, with one history entry per round.

Entry points: :func:`simulate` runs the whole federation in one process with Flower's
simulation engine (a virtual node per dataset); the module-level :data:`client_app` and
:data:`server_app` serve real deployments (``examples/federated``). Both run the same code.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

try:
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Error,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.common.constant import ErrorCode
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "scssl.federated needs Flower: pip install -e '.[federated]' in the scssl checkout "
        "(or pip install 'flwr[simulation]==1.42.0')"
    ) from err

from scssl.data import CellData, DataError, MatrixSpec
from scssl.methods import get_method
from scssl.model import SSLModel
from scssl.train import TrainConfig, Trainer, cpu_threads

# Under Flower's logger, so that these lines reach the console, `flwr run --stream` and
# `flwr log` beside Flower's own (an "scssl" logger has no handler in a ServerApp process).
log = logging.getLogger("flwr.scssl")

MIN_SHARED_GENES = 50
"""Fewer genes shared by all nodes than this stops the run (identifiers probably differ)."""

_MOMENT_BATCH = 1024  # cells per pass when a node computes its moments


# ---- settings ------------------------------------------------------------------------------------
@dataclass
class FederatedSettings:
    """What the server runs: the method, the rounds and how nodes read their cells.

    Attributes
    ----------
    method
        A registered method name.
    rounds
        Federated rounds.
    local_epochs
        Passes over its own cells each sampled node makes per round.
    batch_size, lr, seed
        Minibatch size, peak learning rate (cosine over rounds down to 10%), seed of the
        initial weights and of every node's masks and batch order.
    layer, use_raw, input_kind, batch_key
        Which matrix every node reads, as in :class:`~scssl.model.SSLModel`.
    fraction_train
        Fraction of the nodes sampled each round (at least one).
    min_nodes
        Nodes to wait for before starting; all nodes connected then form the federation.
    hyperparameters
        The method's hyper-parameters (``gmt=`` is read on the server).
    timeout
        Seconds to wait for the nodes to connect, and for each round's replies.
    """

    method: str = "mae"
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    layer: str | None = None
    use_raw: bool = False
    input_kind: str = "auto"
    batch_key: str | None = None
    fraction_train: float = 1.0
    min_nodes: int = 2
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        for name, least in (("rounds", 1), ("local_epochs", 1), ("batch_size", 2), ("min_nodes", 1)):
            if int(getattr(self, name)) < least:
                raise ValueError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.input_kind not in ("auto", "counts", "lognorm"):
            raise ValueError(f"input_kind must be 'auto', 'counts' or 'lognorm', got {self.input_kind!r}")
        # Fail here, before any node is contacted, on an unknown method or hyper-parameter.
        get_method(self.method).Config.from_dict(dict(self.hyperparameters))

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederatedSettings:
        """Settings from a Flower run config (``[tool.flwr.app.config]`` / ``flwr run -c``).

        Keys are dashed (``local-epochs``); ``hyperparameters`` is a JSON object in a string;
        an empty string means "not set" for ``layer`` and ``batch-key`` (TOML has no null).
        """
        get = run_config.get
        hyperparameters = get("hyperparameters", "") or "{}"
        try:
            hyperparameters = json.loads(hyperparameters)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"run config 'hyperparameters' must be a JSON object in a string, e.g. "
                f"'{{\"loss\": \"mse\"}}'; got {hyperparameters!r} ({err})"
            ) from None
        if not isinstance(hyperparameters, dict):
            raise TypeError(f"run config 'hyperparameters' must be a JSON object, got {hyperparameters!r}")
        return cls(
            method=str(get("method", "mae")), rounds=int(get("rounds", 10)),
            local_epochs=int(get("local-epochs", 1)), batch_size=int(get("batch-size", 256)),
            lr=float(get("lr", 1e-3)), seed=int(get("seed", 0)), layer=str(get("layer", "")) or None,
            use_raw=bool(get("use-raw", False)), input_kind=str(get("input-kind", "auto")),
            batch_key=str(get("batch-key", "")) or None,
            fraction_train=float(get("fraction-train", 1.0)), min_nodes=int(get("min-nodes", 2)),
            hyperparameters=hyperparameters, timeout=float(get("timeout", 3600.0)),
        )

    def round_lr(self, server_round: int) -> float:
        """Learning rate of round ``server_round`` (1-based): cosine from ``lr`` to 10% of it."""
        progress = (server_round - 1) / max(1, self.rounds - 1)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ---- protocol pieces shared by server and nodes --------------------------------------------------
@dataclass
class NodeDescription:
    """What a node says about its cells in step 1 (no values, no cell names).

    Attributes
    ----------
    node_id
        Flower's id of the node.
    name
        How errors and logs name the node (``name`` in its node config, else its file's name).
    partition
        ``partition-id`` from its node config (simulation: the dataset's position), if any.
    genes, kind, n_cells, batch_categories
        Its gene names, input kind, number of cells and batch names (``None`` without a batch key).
    """

    node_id: int
    name: str
    partition: int | None
    genes: list[str]
    kind: str
    n_cells: int
    batch_categories: list[str] | None = None


def order_nodes(nodes: Iterable[NodeDescription]) -> list[NodeDescription]:
    """Nodes by ``partition-id`` when every node has one, else by node id: "first" is then
    the same node on every run."""
    nodes = list(nodes)
    if all(n.partition is not None for n in nodes):
        return sorted(nodes, key=lambda n: (n.partition, n.node_id))
    return sorted(nodes, key=lambda n: n.node_id)


def shared_vocabulary(
    nodes: Sequence[NodeDescription], min_genes: int = MIN_SHARED_GENES,
) -> tuple[list[str], str]:
    """The model's genes (shared by every node, in the first node's order) and input kind.

    Parameters
    ----------
    nodes
        The nodes' descriptions, first node first (see :func:`order_nodes`).
    min_genes
        Fewest shared genes accepted.

    Raises
    ------
    DataError
        When the nodes hold different kinds of values, or share fewer than ``min_genes`` genes.
    """
    if not nodes:
        raise ValueError("no nodes to build a vocabulary from")
    kinds = {n.kind for n in nodes}
    if len(kinds) > 1:
        which = ", ".join(f"{n.name}: {n.kind}" for n in nodes)
        raise DataError(
            f"the nodes hold different kinds of values ({which}); every institution must give raw "
            "counts, or every one log-normalised values: point each node at the same kind of "
            "matrix (layer= / use_raw=, e.g. raw counts in the same layer everywhere)"
        )
    common = set(nodes[0].genes).intersection(*(n.genes for n in nodes[1:]))
    genes = [g for g in nodes[0].genes if g in common]
    if len(genes) < min_genes:
        counts = ", ".join(f"{n.name}: {len(n.genes)} genes" for n in nodes)
        raise DataError(
            f"only {len(genes)} genes are shared by all {len(nodes)} nodes ({counts}); at least "
            f"{min_genes} are needed. Check that every institution uses the same gene identifiers "
            "(symbols vs Ensembl IDs, same case and version suffixes) and a common gene panel"
        )
    return genes, kinds.pop()


def pool_moments(
    moments: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Sum the nodes' ``(n, Σx, Σx²)`` (float64): the moments of all their cells together."""
    n, total, sq_total = 0, None, None
    for n_i, total_i, sq_i in moments:
        total_i, sq_i = total_i.double(), sq_i.double()
        n += int(n_i)
        total = total_i.clone() if total is None else total + total_i
        sq_total = sq_i.clone() if sq_total is None else sq_total + sq_i
    if total is None:
        raise ValueError("no moments to pool")
    return n, total, sq_total


def pool_rows(arrays: Sequence[np.ndarray], weights: Sequence[float],
              rng: np.random.Generator) -> np.ndarray:
    """One array whose every row is the same row of one node's array, the node drawn per row
    in proportion to its weight (its cells): how a buffer of samples is pooled."""
    p = np.asarray(weights, np.float64)
    source = rng.choice(len(arrays), size=len(arrays[0]), p=p / p.sum())
    return np.stack(arrays)[source, np.arange(len(source))]


def check_federable(model: SSLModel) -> None:
    """Refuse a method that must see the cells before training (see step 2 of the protocol).

    Raises
    ------
    ValueError
        Naming the fix (gene sets from a GMT, or random masking).
    """
    if model.module.setup_needs_data:
        raise ValueError(
            f"method {model.method_name!r} with these settings computes state from the cells "
            "themselves before training (co-expression gene modules for masking="
            f"{getattr(model.config, 'masking', '?')!r}), which no federated server can see; "
            "pass gene sets instead (gmt='sets.gmt', read on the server, or gene_sets={name: "
            "[genes]}), or use masking='random'"
        )


def describe_model(model: SSLModel) -> bytes:
    """The model description every train message carries: enough to rebuild it (UTF-8 JSON;
    bytes, so that Flower's logs show ``<bytes>`` rather than the whole gene list)."""
    return json.dumps({
        "method": model.method_name, "hyperparameters": model.config.to_dict(),
        "genes": model.genes, "input": asdict(model.spec),
        "batch_key": model.batch_key, "batch_categories": model.batch_categories,
    }).encode()


def model_from_description(description: bytes | str | dict) -> SSLModel:
    """The untrained model a description (:func:`describe_model`) names, from the registry."""
    d = description if isinstance(description, dict) else json.loads(description)
    return SSLModel.from_vocabulary(
        d["genes"], MatrixSpec(**d["input"]), d["method"], batch_key=d["batch_key"],
        batch_categories=d["batch_categories"], seed=None, **d["hyperparameters"],
    )


# ---- the node (ClientApp) ------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _read(path: str, mtime_ns: int) -> ad.AnnData:
    """A node's AnnData, read once per process (``mtime_ns`` makes a rewritten file re-read)."""
    return ad.read_h5ad(path)


@functools.lru_cache(maxsize=4)
def _cells(path: str, layer: str | None, use_raw: bool, kind: str, require_counts: bool,
           batch_key: str | None, batch_categories: tuple[str, ...] | None,
           genes: tuple[str, ...] | None) -> CellData:
    """The node's validated cells, cached: every round would otherwise re-read and re-scan them."""
    adata = _read(path, os.stat(path).st_mtime_ns)
    return CellData(
        adata, layer=layer, use_raw=use_raw, genes=genes, kind=kind, require_counts=require_counts,
        batch_key=batch_key, batch_categories=batch_categories,
    )


def _node_cells(path: str, model: SSLModel) -> CellData:
    """The node's cells as ``model`` reads them (its matrix, its genes, its batch categories)."""
    return _cells(
        path, model.spec.layer, model.spec.use_raw, model.spec.kind, model.config.needs_counts,
        model.batch_key, None if model.batch_categories is None else tuple(model.batch_categories),
        tuple(model.genes),
    )


@dataclass(frozen=True)
class NodeData:
    """Where a node's cells are and what the node is called."""

    path: str
    name: str


def data_from_node_config(context: Context) -> NodeData:
    """A deployed node's data: ``data-path`` (and optional ``name``) from its ``--node-config``."""
    path = context.node_config.get("data-path")
    if not path:
        raise DataError(
            "this SuperNode has no 'data-path' in its node config; start it with "
            "flower-supernode ... --node-config 'data-path=\"/path/to/site.h5ad\"'"
        )
    path = str(path)
    if not Path(path).is_file():
        raise DataError(f"data-path {path!r} of this SuperNode is not a file; give the .h5ad's full path")
    return NodeData(path, str(context.node_config.get("name") or Path(path).name))


@dataclass(frozen=True)
class SimulationData:
    """Simulation: node ``partition-id`` *i* reads ``paths[i]`` (picklable, for ray's actors)."""

    paths: tuple[str, ...]
    names: tuple[str, ...]

    def __call__(self, context: Context) -> NodeData:
        i = int(context.node_config["partition-id"])
        return NodeData(self.paths[i], self.names[i])


def _node_index(context: Context) -> int:
    """This node's number for seeding: its partition in simulation, else Flower's node id."""
    partition = context.node_config.get("partition-id")
    return int(partition) if partition is not None else int(context.node_id)


def _local_config(config: ConfigRecord, context: Context, server_round: int, lr: float) -> TrainConfig:
    """The node's :class:`TrainConfig` for one round: its local epochs, no validation split,
    no early stopping, the round's constant learning rate, a seed per (run seed, round, node)."""
    entropy = [int(config["seed"]), server_round, _node_index(context)]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return TrainConfig(
        max_epochs=int(config["local-epochs"]), batch_size=int(config["batch-size"]), lr=lr,
        validation_fraction=0.0, patience=0, warmup_epochs=0, lr_schedule="constant",
        restore_best=False, seed=seed, num_threads=int(context.node_config.get("num-threads", 1)),
        device=str(context.node_config.get("device", "auto")), distributed=False,
    )


def _global_model(
    msg: Message, locate: Callable[[Context], NodeData], context: Context,
) -> tuple[SSLModel, CellData]:
    """The model the message describes, with its weights, and this node's cells aligned to it."""
    model = model_from_description(msg.content["config"]["model"])
    model.module.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model, _node_cells(locate(context).path, model)


def describe_node(where: NodeData, *, layer: str | None = None, use_raw: bool = False,
                  input_kind: str = "auto", require_counts: bool = False, batch_key: str | None = None,
                  node_id: int = 0, partition: int | None = None) -> NodeDescription:
    """Step 1 on a node: what its cells are, without their values (validates them too).

    Parameters
    ----------
    where
        The node's file and name.
    layer, use_raw, input_kind, require_counts, batch_key
        How to read the cells (:class:`~scssl.data.CellData`).
    node_id, partition
        The node's Flower id and ``partition-id``.
    """
    data = _cells(where.path, layer, use_raw, input_kind, require_counts, batch_key, None, None)
    return NodeDescription(
        node_id=node_id, name=where.name, partition=partition, genes=list(data.genes),
        kind=data.spec.kind, n_cells=data.n_cells, batch_categories=data.batch_categories,
    )


def node_moments(where: NodeData, model: SSLModel) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Step 2 on a node: ``(n, Σx, Σx²)`` of its cells normalised as ``model`` normalises them,
    on ``model``'s genes."""
    data = _node_cells(where.path, model)
    return model.module.transform.moments(counts for _, counts in data.batches(_MOMENT_BATCH))


def node_library_histogram(where: NodeData, model: SSLModel) -> torch.Tensor:
    """Step 2 on a node, first part: its cells' log library sizes on ``model``'s genes, binned."""
    data = _node_cells(where.path, model)
    return model.module.transform.library_histogram(counts for _, counts in data.batches(_MOMENT_BATCH))


def handle_query(msg: Message, context: Context, locate: Callable[[Context], NodeData]) -> Message:
    """Steps 1 and 2: describe the node's cells, or send their library histogram or per-gene
    moments."""
    config = msg.content["config"]
    step = str(config["step"])
    where = locate(context)
    if step == "describe":
        partition = context.node_config.get("partition-id")
        description = describe_node(
            where, **json.loads(str(config["data"])), node_id=int(context.node_id),
            partition=None if partition is None else int(partition),
        )
        content = RecordDict({"description": ConfigRecord({"json": json.dumps(asdict(description))})})
    elif step == "libraries":
        histogram = node_library_histogram(where, model_from_description(config["model"]))
        content = RecordDict({"libraries": ArrayRecord({"histogram": histogram.cpu()})})
    elif step == "moments":
        n, total, sq_total = node_moments(where, model_from_description(config["model"]))
        content = RecordDict({
            "moments": ArrayRecord({"sum": total.cpu(), "sumsq": sq_total.cpu()}),
            "metrics": MetricRecord({"n": int(n)}),
        })
    else:
        raise ValueError(f"unknown query step {step!r}; this node runs scssl's federated protocol")
    return Message(content=content, reply_to=msg)


def handle_train(msg: Message, context: Context, locate: Callable[[Context], NodeData]) -> Message:
    """Step 3 on a node: the global weights, ``local-epochs`` of training, the new weights back."""
    config = msg.content["config"]
    model, data = _global_model(msg, locate, context)
    server_round = int(config["server-round"])
    local = _local_config(config, context, server_round, float(config["lr"]))
    trainer = Trainer(model.module, data, local, checkpoint_dir=None)
    history = trainer.fit(progress=False, fit_inputs=False)  # the server set the input statistics
    model.module.cpu()
    metrics = {"num-examples": len(trainer.train_idx), "train_loss": float(history[-1]["train_loss"])}
    return Message(content=RecordDict({
        "arrays": ArrayRecord(model.module.state_dict()), "metrics": MetricRecord(metrics),
    }), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, locate: Callable[[Context], NodeData]) -> Message:
    """The global model's mean loss on this node's cells (masks from a seed fixed across rounds,
    so that rounds compare)."""
    config = msg.content["config"]
    model, data = _global_model(msg, locate, context)
    trainer = Trainer(model.module, data, _local_config(config, context, 0, 0.0), checkpoint_dir=None)
    model.module.to(trainer.device)
    with cpu_threads(trainer.config.num_threads):
        loss = trainer.mean_loss(np.arange(data.n_cells))
    model.module.cpu()
    return Message(content=RecordDict({
        "metrics": MetricRecord({"num-examples": data.n_cells, "eval_loss": float(loss)}),
    }), reply_to=msg)


def make_client_app(locate: Callable[[Context], NodeData] = data_from_node_config) -> ClientApp:
    """A Flower ClientApp running scssl's protocol on the cells ``locate(context)`` names.

    Parameters
    ----------
    locate
        Maps a node's context to its data (default: ``data-path`` in its node config).
        Must be picklable for the simulation engine.
    """
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return _guarded(handle_query, msg, context, locate)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _guarded(handle_train, msg, context, locate)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _guarded(handle_evaluate, msg, context, locate)

    return app


def _guarded(handler: Callable[..., Message], msg: Message, context: Context,
             locate: Callable[[Context], NodeData]) -> Message:
    """Run a handler; an exception becomes an error reply naming the node and the error (the
    server shows it and stops) instead of a runtime's traceback. The traceback stays in the
    node's log."""
    try:
        return handler(msg, context, locate)
    except Exception as err:  # every failure must reach the server
        log.exception("scssl federated node: %s failed", msg.metadata.message_type)
        try:
            name = locate(context).name
        except (DataError, KeyError, IndexError):  # no data-path: the node id must do
            name = f"node {context.node_id}"
        reason = json.dumps({"node": name, "error": type(err).__name__, "message": str(err)})
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


# ---- the server (ServerApp) ----------------------------------------------------------------------
class _Federation:
    """The grid seen by the strategy: only the nodes that agreed on the vocabulary and sent
    moments (a SuperNode connecting later would train on genes and statistics it never saw)."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid, self._node_ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _raise_failures(replies: Sequence[Message], names: dict[int, str], what: str) -> None:
    """Stop the run when a node failed, with each node's name and error: a
    :class:`~scssl.data.DataError` when every failure was one (the message names the fix),
    else a RuntimeError."""
    failures = []
    for reply in replies:
        if not reply.has_error():
            continue
        try:  # an scssl node's report (see _guarded)
            report = json.loads(reply.error.reason)
            failures.append((report["node"], report["error"], f"{report['error']}: {report['message']}"))
        except (TypeError, ValueError, KeyError):  # the runtime's own (node lost, app crashed)
            node = names.get(reply.metadata.src_node_id, f"node {reply.metadata.src_node_id}")
            failures.append((node, None, str(reply.error.reason)))
    if failures:
        text = f"federated {what} failed on " + "; ".join(f"{node}: {why}" for node, _, why in failures)
        raise (DataError if all(kind == "DataError" for _, kind, _ in failures) else RuntimeError)(text)


class _ScsslFedAvg(FedAvg):
    """FedAvg with scssl's round settings: the round's learning rate in its train config,
    node sampling seeded by the run's seed, weights returned in their own dtypes, buffers of
    samples (``SSLMethod.sample_buffers``) pooled by rows, and a node's failure stopping the
    run (Flower would log it and average the others)."""

    def __init__(
        self, settings: FederatedSettings, names: dict[int, str], dtypes: dict[str, np.dtype],
        sample_buffers: Sequence[str] = (),
    ) -> None:
        n = len(names)
        super().__init__(fraction_train=settings.fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=n)
        self.settings, self.names, self.dtypes = settings, names, dtypes
        self.sample_buffers = tuple(sample_buffers)
        self.sent: dict[int, list[int]] = {}
        self.rounds: dict[int, dict[str, int]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        nodes = sorted(grid.get_node_ids())
        k = max(1, int(len(nodes) * self.settings.fraction_train))
        pick = np.random.default_rng([self.settings.seed, server_round]).permutation(len(nodes))[:k]
        chosen = sorted(nodes[i] for i in pick)
        self.sent[server_round] = chosen
        lr = self.settings.round_lr(server_round)
        round_config = ConfigRecord({**config, "server-round": server_round, "lr": lr})
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: round_config})
        log.info("federated round %d: lr %.3g, training on %d of %d nodes", server_round, lr,
                 len(chosen), len(nodes))
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in chosen]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        _raise_failures(replies, self.names, f"training in round {server_round}")
        answered = {r.metadata.src_node_id for r in replies}
        missing = [self.names.get(n, n) for n in self.sent.get(server_round, []) if n not in answered]
        if missing:
            log.warning("federated round %d: no reply from %s within %.0f s; averaging the others",
                        server_round, missing, self.settings.timeout)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            raise RuntimeError(f"federated round {server_round}: no node returned weights (timeout "
                               f"{self.settings.timeout:.0f} s); check the SuperNodes' logs")
        cells = [r.content.metric_records["metrics"]["num-examples"] for r in replies]
        self.rounds[server_round] = {"nodes": len(replies), "cells": int(sum(cells))}
        rng = np.random.default_rng([self.settings.seed, server_round, 1])  # not the sampling stream
        for key in self.sample_buffers:
            rows = [r.content.array_records["arrays"][key].numpy() for r in replies]
            arrays[key] = Array(pool_rows(rows, cells, rng))
        return self._own_dtypes(arrays), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        _raise_failures(replies, self.names, f"evaluation in round {server_round}")
        return super().aggregate_evaluate(server_round, replies)

    def _own_dtypes(self, arrays: ArrayRecord) -> ArrayRecord:
        """Averaging turns every array into float64 (booleans and counters too); cast back, so
        that messages stay float32-sized and integer buffers stay integers."""
        out = {}
        for key, array in arrays.items():
            value, dtype = array.numpy(), self.dtypes[key]
            if dtype == np.bool_:
                value = value > 0.5
            elif np.issubdtype(dtype, np.integer):
                value = np.rint(value)
            out[key] = Array(np.ascontiguousarray(value.astype(dtype)))
        return ArrayRecord(out)


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    start = time.monotonic()
    while len(ids := sorted(grid.get_node_ids())) < n:
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"only {len(ids)} of the {n} nodes asked for connected within {timeout:.0f} s; start "
                "more SuperNodes, or lower min-nodes in the run config"
            )
        time.sleep(0.5)
    return ids


def _ask(grid: Grid, node_ids: Sequence[int], content: dict[str, Any], names: dict[int, str],
         timeout: float) -> dict[int, RecordDict]:
    """Send one query to every node; every node must answer."""
    record = RecordDict({"config": ConfigRecord(content)})
    messages = [Message(content=record, message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    _raise_failures(replies, names, f"step {content['step']!r}")
    answered = {r.metadata.src_node_id: r.content for r in replies}
    if missing := [names.get(n, n) for n in node_ids if n not in answered]:
        raise TimeoutError(
            f"federated step {content['step']!r}: no reply from {missing} within {timeout:.0f} s"
        )
    return answered


def pretrain(grid: Grid, settings: FederatedSettings) -> SSLModel:
    """Run the whole protocol from a ServerApp's ``main`` and return the trained model.

    Parameters
    ----------
    grid
        The ServerApp's grid.
    settings
        Method, rounds and data settings.

    Returns
    -------
    The global model (no training cells attached), its history one entry per round:
    ``round``, ``lr``, ``train_loss`` (the trained nodes' mean loss over their last local
    epoch, weighted by cells), ``eval_loss`` (the averaged model's mean loss on every node's
    cells), ``nodes`` and ``cells`` (trained this round).
    """
    node_ids = _wait_for_nodes(grid, settings.min_nodes, settings.timeout)
    names: dict[int, str] = {n: f"node {n}" for n in node_ids}
    method_config = get_method(settings.method).Config.from_dict(dict(settings.hyperparameters))

    # 1. Vocabulary.
    reading = {"layer": settings.layer, "use_raw": settings.use_raw, "input_kind": settings.input_kind,
               "require_counts": method_config.needs_counts, "batch_key": settings.batch_key}
    query = {"step": "describe", "data": json.dumps(reading)}
    replies = _ask(grid, node_ids, query, names, settings.timeout)
    nodes = order_nodes(
        NodeDescription(**json.loads(str(r.config_records["description"]["json"])))
        for r in replies.values()
    )
    names.update({n.node_id: n.name for n in nodes})
    genes, kind = shared_vocabulary(nodes)
    categories = None
    if settings.batch_key is not None:
        categories = sorted(set().union(*(n.batch_categories or [] for n in nodes)))
    log.info("federation of %d nodes (%s): %d shared genes, %s input, %d cells", len(nodes),
             ", ".join(n.name for n in nodes), len(genes), kind, sum(n.n_cells for n in nodes))
    model = SSLModel.from_vocabulary(
        genes, MatrixSpec(layer=settings.layer, use_raw=settings.use_raw, kind=kind), settings.method,
        batch_key=settings.batch_key, batch_categories=categories, seed=settings.seed,
        **settings.hyperparameters,
    )
    check_federable(model)

    # 2. Input statistics: the pooled median library (when it sets the target sum), then the
    # pooled moments.
    transform = model.module.transform
    if transform.target_from_data:
        query = {"step": "libraries", "model": describe_model(model)}
        replies = _ask(grid, node_ids, query, names, settings.timeout)
        transform.set_target(sum(torch.from_numpy(r.array_records["libraries"]["histogram"].numpy())
                                 for r in replies.values()))
        # Recorded, so that the nodes rebuild the model with this target from its description.
        model.config.target_sum = float(transform.target_sum)
    query = {"step": "moments", "model": describe_model(model)}
    replies = _ask(grid, node_ids, query, names, settings.timeout)
    n, total, sq_total = pool_moments(
        (int(r.metric_records["metrics"]["n"]),
         torch.from_numpy(r.array_records["moments"]["sum"].numpy()),
         torch.from_numpy(r.array_records["moments"]["sumsq"].numpy()))
        for r in replies.values()
    )
    model.module.transform.set_stats(n, total, sq_total)

    # 3. Rounds.
    state = model.module.state_dict()
    strategy = _ScsslFedAvg(settings, names, {k: v.numpy().dtype for k, v in state.items()},
                            sample_buffers=model.module.sample_buffers)
    config = ConfigRecord({"model": describe_model(model), "local-epochs": settings.local_epochs,
                           "batch-size": settings.batch_size, "seed": settings.seed})
    result = strategy.start(
        grid=_Federation(grid, [n.node_id for n in nodes]), initial_arrays=ArrayRecord(state),
        num_rounds=settings.rounds, timeout=settings.timeout, train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
    )

    # 4. Result.
    model.module.load_state_dict(result.arrays.to_torch_state_dict())
    model.module.eval()
    model.federation = asdict(settings)
    model.history = []
    for r in range(1, settings.rounds + 1):
        train, evaluate = result.train_metrics_clientapp.get(r), result.evaluate_metrics_clientapp.get(r)
        model.history.append({
            "round": r, "lr": settings.round_lr(r),
            "train_loss": None if train is None else float(train["train_loss"]),
            "eval_loss": None if evaluate is None else float(evaluate["eval_loss"]),
            **strategy.rounds.get(r, {"nodes": 0, "cells": 0}),
        })
    return model


server_app = ServerApp()
"""The deployment's ServerApp: settings from the run config, the model saved to ``out``."""


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    settings = FederatedSettings.from_run_config(context.run_config)
    out = Path(str(context.run_config.get("out", "") or "scssl_federated_model")).expanduser()
    overwrite = bool(context.run_config.get("overwrite", False))
    if (out / "config.json").exists() and not overwrite:  # before hours of training, not after
        raise FileExistsError(f"{out} already holds a model; set out= to another folder or overwrite=true")
    model = pretrain(grid, settings)
    model.save(out, overwrite=overwrite)
    log.info("saved the federated model to %s", out.resolve())


client_app = make_client_app()
"""The deployment's ClientApp: each SuperNode reads the ``.h5ad`` its ``data-path`` names."""


# ---- simulation ----------------------------------------------------------------------------------
def _dataset_files(
    datasets: Sequence[str | os.PathLike | ad.AnnData], folder: Path,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """One file per dataset: paths as given, AnnData written into ``folder`` (each virtual node
    reads its own file, as an institution would)."""
    paths, names = [], []
    for i, dataset in enumerate(datasets):
        if isinstance(dataset, ad.AnnData):
            path = folder / f"node{i}.h5ad"
            dataset.write_h5ad(path)
            paths.append(str(path))
            names.append(f"dataset {i}")
        else:
            path = Path(dataset).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"dataset {i}: {path} is not a file; pass .h5ad paths or AnnData objects"
                )
            paths.append(str(path.resolve()))
            names.append(f"dataset {i} ({path.name})")
    return tuple(paths), tuple(names)


def simulate(
    datasets: Sequence[str | os.PathLike | ad.AnnData], method: str = "mae", rounds: int = 10,
    local_epochs: int = 1, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
    layer: str | None = None, use_raw: bool = False, batch_key: str | None = None,
    fraction_train: float = 1.0, *, input_kind: str = "auto", **hyperparameters: Any,
) -> SSLModel:
    """Federated pre-training in one process: one virtual Flower node per dataset.

    Runs :data:`client_app`'s protocol and :func:`pretrain` on Flower's simulation engine
    (ray; one CPU per node). Useful to try federated training, or to compare it with pooled
    training, before deploying it across institutions.

    Parameters
    ----------
    datasets
        One ``.h5ad`` path or AnnData per institution (AnnData are written to a temporary
        folder first). The first dataset's gene order is the model's.
    method
        A registered method name.
    rounds, local_epochs
        Federated rounds, and passes each node makes over its cells per round.
    batch_size, lr, seed
        Minibatch size, peak learning rate (cosine over the rounds to 10%), seed.
    layer, use_raw, batch_key, input_kind
        Which matrix every node reads, as in :class:`~scssl.model.SSLModel`.
    fraction_train
        Fraction of the nodes that train each round (at least one; sampling seeded by ``seed``).
    **hyperparameters
        The method's hyper-parameters.

    Returns
    -------
    The trained :class:`~scssl.model.SSLModel` (``history``: one entry per round).

    Examples
    --------
    >>> model = scssl.federated.simulate(["site_a.h5ad", "site_b.h5ad"], rounds=20)
    >>> model.save("federated_mae/")
    """
    from flwr.simulation import run_simulation

    if not datasets:
        raise ValueError("pass at least one dataset (one per institution)")
    settings = FederatedSettings(
        method=method, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr,
        seed=seed, layer=layer, use_raw=use_raw, input_kind=input_kind, batch_key=batch_key,
        fraction_train=fraction_train, min_nodes=len(datasets), hyperparameters=hyperparameters,
    )
    out: dict[str, SSLModel] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:  # runs in this process: hand the model back
        out["model"] = pretrain(grid, settings)

    # Ray's progress-bar manager replaces builtins.print for good; numba cannot compile code
    # that prints through a Python function, so pynndescent (sc.pp.neighbors on > 4,096 cells)
    # would then fail in this process. Keep print as it was.
    builtin_print = builtins.print
    try:
        with tempfile.TemporaryDirectory(prefix="scssl-federated-") as folder:
            paths, names = _dataset_files(datasets, Path(folder))
            run_simulation(
                server_app=server, client_app=make_client_app(SimulationData(paths, names)),
                num_supernodes=len(paths),
                backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
            )
    finally:
        builtins.print = builtin_print
    if "model" not in out:
        raise RuntimeError("the federated simulation ended without a model; see Flower's log above")
    return out["model"]


__all__ = [
    "MIN_SHARED_GENES",
    "FederatedSettings",
    "NodeData",
    "NodeDescription",
    "SimulationData",
    "check_federable",
    "client_app",
    "data_from_node_config",
    "describe_model",
    "describe_node",
    "handle_evaluate",
    "handle_query",
    "handle_train",
    "make_client_app",
    "model_from_description",
    "node_moments",
    "order_nodes",
    "pool_moments",
    "pretrain",
    "server_app",
    "shared_vocabulary",
    "simulate",
]
