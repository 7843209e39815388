"""The ``scssl`` command line: a thin shell over the Python API.

Each subcommand is one ``_<name>(subparsers)`` function that declares its arguments and
points ``func`` at the code to run; add a subcommand by adding one to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import anndata as ad

AMP = {"auto": None, "on": True, "off": False}  # --amp → TrainConfig.amp


def _parse_set(pairs: list[str]) -> dict:
    """``["mask_ratio=0.5", "hidden=[256,128]"]`` → hyper-parameters (values parsed as JSON when possible)."""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def read_h5ad(path: str, backed: bool = False) -> ad.AnnData:
    if not Path(path).exists():
        raise SystemExit(f"error: {path} not found")
    return ad.read_h5ad(path, backed="r" if backed else None)


def refuse_existing_out(args) -> None:
    """Fail before any work when ``--out`` exists and ``--overwrite`` was not given."""
    if Path(args.out).exists() and not args.overwrite:
        raise SystemExit(f"error: --out {args.out} exists; pass --overwrite to replace it")


def write_h5ad(adata: ad.AnnData, out: str, input_path: str | None, overwrite: bool) -> None:
    """Write atomically; refuse to replace an existing file (the input above all) unless asked."""
    from scssl.checkpoint import atomic_write

    out_path = Path(out)
    if out_path.exists() and not overwrite:
        same = input_path is not None and out_path.resolve() == Path(input_path).resolve()
        what = "the input file" if same else "an existing file"
        raise SystemExit(f"error: --out {out} is {what}; pass --overwrite to replace it")
    atomic_write(out_path, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))


def refuse_existing_model(args, allowed: bool = False) -> Path:
    """``--out`` as a Path; fail before any training when it already holds a model and neither
    ``--overwrite`` nor ``allowed`` (e.g. ``--resume``) says to go on."""
    out = Path(args.out)
    if (out / "config.json").exists() and not (args.overwrite or allowed):
        raise SystemExit(f"error: {out} already holds a model; pass --overwrite or choose another --out")
    return out


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that trains a model: where it goes, which method, which matrix."""
    p.add_argument("--out", required=True, help="model folder to write (config.json + weights.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in OUT")
    p.add_argument("--method", default="mae", help="registered method name (see `scssl methods`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method hyper-parameter")
    p.add_argument("--layer", default=None, help="layer with the counts (default: X)")
    p.add_argument("--use-raw", action="store_true", help="read adata.raw.X")
    p.add_argument("--batch-key", default=None, help=".obs column with batch labels")


# ---- subcommands ---------------------------------------------------------------------------------
def _pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train an SSL model on an .h5ad file",
        description="Pre-train an SSL model. For several GPUs (or CPU processes) launch it with "
                    "torchrun, e.g. `torchrun --standalone --nproc-per-node 4 -m scssl pretrain ...`: "
                    "each process trains on its share of the cells (--batch-size per process).",
    )
    p.add_argument("input", help=".h5ad with raw counts (or log-normalised values with loss=mse)")
    add_model_options(p)
    p.add_argument("--epochs", type=int, default=100,
                   help="most epochs; early stopping on the validation cells may end sooner (100)")
    p.add_argument("--batch-size", type=int, default=256, help="cells per minibatch and process (256)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, after warm-up (1e-3)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the weights, masks, views and validation split (0)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when present), cpu or cuda")
    p.add_argument("--amp", choices=sorted(AMP), default="auto",
                   help="bf16 autocast: auto = on CUDA only; on = on the CPU too (faster on CPUs "
                        "with AMX or AVX-512 BF16); off = never")
    p.add_argument("--backed", action="store_true", help="read the file out of core (backed='r')")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in OUT/checkpoints")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args) -> None:
    from scssl import SSLModel
    from scssl.distributed import is_main_process

    out = refuse_existing_model(args, allowed=args.resume)
    adata = read_h5ad(args.input, args.backed)
    model = SSLModel(adata, method=args.method, layer=args.layer, use_raw=args.use_raw,
                     batch_key=args.batch_key, seed=args.seed, **_parse_set(args.set))
    model.fit(max_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
              device=args.device, amp=AMP[args.amp], checkpoint_dir=out / "checkpoints", resume=args.resume)
    if is_main_process():  # under torchrun every process holds the same weights; one writes them
        model.save(out, overwrite=True)
        print(f"saved {model} to {out}")


def _embed(sub) -> None:
    p = sub.add_parser("embed", help="embed cells with a saved model into obsm")
    p.add_argument("model", help="model folder written by `scssl pretrain`")
    p.add_argument("input", help=".h5ad to embed (genes aligned to the model by name)")
    p.add_argument("--out", required=True, help=".h5ad to write (the input is never replaced unless --overwrite)")
    p.add_argument("--key", default="X_scssl", help="obsm key for the embedding")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_embed)


def run_embed(args) -> None:
    from scssl import SSLModel

    refuse_existing_out(args)
    model = SSLModel.load(args.model)
    adata = read_h5ad(args.input)
    adata.obsm[args.key] = model.embed(adata)
    write_h5ad(adata, args.out, args.input, args.overwrite)
    print(f"wrote obsm[{args.key!r}] ({adata.n_obs} cells × {adata.obsm[args.key].shape[1]}) to {args.out}")


def _methods(sub) -> None:
    p = sub.add_parser("methods", help="list registered SSL methods and their default hyper-parameters")
    p.set_defaults(func=run_methods)


def run_methods(args) -> None:
    from scssl.methods import METHODS

    for name, cls in sorted(METHODS.items()):
        print(f"{name}: {json.dumps(cls.Config().to_dict())}")


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="pre-train on scanpy's bundled pbmc68k_reduced and compare with PCA")
    p.add_argument("--out", default="scssl_demo", help="folder for the model and the UMAP PNG")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--method", default="mae")
    p.set_defaults(func=run_demo)


def run_demo(args) -> None:
    from scssl.demo import run

    run(out=args.out, epochs=args.epochs, method=args.method)


def _annotate(sub) -> None:
    p = sub.add_parser("annotate", help="train a cell-type classifier on a labelled reference and annotate a query")
    p.add_argument("model", help="model folder written by `scssl pretrain`")
    p.add_argument("reference", help="labelled reference .h5ad")
    p.add_argument("query", help=".h5ad to annotate (genes aligned to the model by name)")
    p.add_argument("--out", required=True, help="annotated query .h5ad to write (never replaces a file unless --overwrite)")
    p.add_argument("--labels-key", default="cell_type", help="reference .obs column with the cell types")
    p.add_argument("--mode", choices=["finetune", "linear", "knn"], default="finetune")
    p.add_argument("--n-shots", type=int, default=None, help="train on at most this many cells per type")
    p.add_argument("--unknown-threshold", type=float, default=0.5, help="call 'unknown' below this confidence")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_annotate)


def run_annotate(args) -> None:
    from scssl import SSLModel, tl

    refuse_existing_out(args)
    model = SSLModel.load(args.model)
    ref, query = read_h5ad(args.reference), read_h5ad(args.query)
    result = tl.annotate(model, ref, query, labels_key=args.labels_key, mode=args.mode, n_shots=args.n_shots,
                         unknown_threshold=args.unknown_threshold, epochs=args.epochs, seed=args.seed)
    write_h5ad(query, args.out, args.query, args.overwrite)
    counts = query.obs["scssl_prediction"].value_counts()
    print(f"annotated {query.n_obs} cells ({args.mode}): " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    if result.n_test and result.macro_f1 == result.macro_f1:  # labelled query: scores are not NaN
        print(f"accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f}")
    print(f"wrote obs['scssl_prediction'], obs['scssl_confidence'] to {args.out}")


def _cluster(sub) -> None:
    p = sub.add_parser("cluster", help="cluster cells on an embedding (Leiden or k-means)")
    p.add_argument("input", help=".h5ad with the embedding in obsm (or pass --model to embed first)")
    p.add_argument("--out", required=True, help=".h5ad to write (never replaces a file unless --overwrite)")
    p.add_argument("--model", default=None, help="model folder: embed into obsm[--use-rep] first")
    p.add_argument("--use-rep", default="X_scssl", help="obsm key of the embedding")
    p.add_argument("--method", choices=["leiden", "kmeans"], default="leiden")
    p.add_argument("--n-clusters", type=int, default=None, help="clusters wanted (Leiden searches its resolution)")
    p.add_argument("--resolution", type=float, default=1.0, help="Leiden resolution without --n-clusters")
    p.add_argument("--labels-key", default=None, help=".obs column with known labels, to score ARI/NMI")
    p.add_argument("--key-added", default="scssl_cluster", help="obs column for the clusters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_cluster)


def run_cluster(args) -> None:
    from scssl import SSLModel, tl

    refuse_existing_out(args)
    adata = read_h5ad(args.input)
    if args.model is not None:
        adata.obsm[args.use_rep] = SSLModel.load(args.model).embed(adata)
    scores = tl.cluster(adata, use_rep=args.use_rep, n_clusters=args.n_clusters, method=args.method,
                        labels_key=args.labels_key, resolution=args.resolution, key_added=args.key_added,
                        seed=args.seed)
    write_h5ad(adata, args.out, args.input, args.overwrite)
    print(", ".join(f"{k} {v:.3f}" if k != "n_clusters" else f"{k} {int(v)}" for k, v in scores.items()))
    print(f"wrote obs[{args.key_added!r}] to {args.out}")


def _bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmark SSL methods against baselines (CSV + HTML report)")
    p.add_argument("config", nargs="?", default=None, help="bench config YAML (or use --preset)")
    p.add_argument("--preset", choices=["quick", "standard"], default=None,
                   help="quick: one small dataset for CI; standard: the published table")
    p.add_argument("--data", nargs="+", default=None, metavar="FILE.h5ad",
                   help="run on these files instead of the config's datasets (labels in obs.cell_type)")
    p.add_argument("--out", default=None, help="output folder (default bench_<preset or config name>); "
                   "rerunning with the same folder resumes")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the config's seeds")
    p.add_argument("--epochs", type=int, default=None, help="override SSL pre-training epochs")
    p.add_argument("--methods", nargs="+", default=None, help="override the methods (names or 'all')")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="override the tasks: knn cluster annotation scib reconstruction protein cost "
                   "(a finished cell is not rescored: run the new tasks into a new --out, then "
                   "scssl.bench.merge_runs the two folders)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.set_defaults(func=run_bench)


def run_bench(args) -> None:
    from scssl import bench

    if (args.config is None) == (args.preset is None):
        raise SystemExit("error: give a config YAML or --preset quick|standard (not both)")
    source = args.preset or args.config
    out = args.out or f"bench_{args.preset or Path(args.config).stem}"
    result = bench.run(source, out, data=args.data, seeds=args.seeds, epochs=args.epochs,
                       methods=args.methods, tasks=args.tasks, device=args.device)
    print(f"{len(result.computed)} cells computed, {len(result.reused)} reused from {result.csv}")
    for key, why in result.skipped.items():
        print(f"skipped {key}: {why}")
    for key, why in result.failed.items():
        print(f"FAILED {key}: {why}", file=sys.stderr)
    print(f"report: {result.report}")
    if result.failed:
        raise SystemExit(1)


def _federated(sub) -> None:
    p = sub.add_parser(
        "federated", help="federated pre-training (Flower) over several .h5ad files, one per institution",
        description="Simulates on this machine a federation with one Flower node per file (no node sees "
                    "another's cells; FedAvg over the weights). For a real deployment across "
                    "institutions see examples/federated/ (needs pip install -e '.[federated]').",
    )
    p.add_argument("inputs", nargs="+", help=".h5ad files, one per institution (the first sets the gene order)")
    add_model_options(p)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1, help="passes each node makes over its cells per round")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine over the rounds)")
    p.add_argument("--fraction-train", type=float, default=1.0, help="fraction of the nodes that train each round")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_federated)


def run_federated(args) -> None:
    out = refuse_existing_model(args)
    for path in args.inputs:
        if not Path(path).exists():
            raise SystemExit(f"error: {path} not found")
    try:
        from scssl.federated import simulate
    except ImportError as err:
        raise SystemExit(f"error: {err}") from None
    model = simulate(
        args.inputs, method=args.method, rounds=args.rounds, local_epochs=args.local_epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, layer=args.layer, use_raw=args.use_raw,
        batch_key=args.batch_key, fraction_train=args.fraction_train, **_parse_set(args.set),
    )
    model.save(out, overwrite=args.overwrite)
    last = model.history[-1]
    print(f"saved {model} to {out} (last round: train loss {last['train_loss']:.4f}, "
          f"evaluation loss {last['eval_loss']:.4f})")


def _drug_response(sub) -> None:
    p = sub.add_parser("drug-response", help="transfer a bulk drug-response model to single cells (scDEAL)")
    p.add_argument("--bulk", required=True, help=".h5ad of bulk cell lines × genes (obs[cell_line_key])")
    p.add_argument("--response", required=True, help="CSV(.gz) with drug_name, dataset, cell_line_key, ln_ic50/auc")
    p.add_argument("--cells", required=True, help=".h5ad of single cells with raw counts")
    p.add_argument("--drug", default="Gefitinib")
    p.add_argument("--out", required=True, help=".h5ad to write (never the input unless --overwrite)")
    p.add_argument("--dataset", default="GDSC2", help="GDSC1, GDSC2 or 'all'")
    p.add_argument("--metric", default="ln_ic50", choices=["ln_ic50", "auc"])
    p.add_argument("--target", default="binary", choices=["binary", "continuous"])
    p.add_argument("--rule", default="quantile", choices=["quantile", "threshold"])
    p.add_argument("--quantile", type=float, default=0.25, help="sensitive below this quantile of the drug's lines")
    p.add_argument("--threshold", type=float, default=None, help="sensitive below this value (with --rule threshold)")
    p.add_argument("--exclude-lines", nargs="*", default=[], help="lines left out of bulk training (the cells' lines)")
    p.add_argument("--cell-line-key", default="cell_line_key")
    p.add_argument("--layer", default=None, help="layer of --cells with the counts (default: X)")
    p.add_argument("--no-adapt", action="store_true", help="apply the bulk model without domain adaptation")
    p.add_argument("--smooth-neighbors", type=int, default=None,
                   help="average each cell over this many nearest cells first (0: raw cells; "
                   "default: scssl.tl.drug_response.SMOOTH_NEIGHBORS)")
    p.add_argument("--scaling", choices=["domain", "rank"], default=None,
                   help="genes standardised within each domain, or every profile ranked within "
                   "itself on the bulk lines' scale, so a cell's score does not depend on the "
                   "other cells in --cells; its scores rank cells, its calls are not calibrated "
                   "(default: scssl.tl.drug_response.SCALING)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_drug_response)


def run_drug_response(args) -> None:
    import pandas as pd

    from scssl.tl.drug_response import drug_response

    refuse_existing_out(args)
    if not Path(args.response).exists():
        raise SystemExit(f"error: {args.response} not found")
    bulk, cells = read_h5ad(args.bulk), read_h5ad(args.cells)
    # The library's default applies unless given: the CLI cannot read it without importing torch.
    given = {"smooth_neighbors": args.smooth_neighbors, "scaling": args.scaling}
    options = {name: value for name, value in given.items() if value is not None}
    res = drug_response(
        bulk, pd.read_csv(args.response), cells, args.drug,
        dataset=None if args.dataset == "all" else args.dataset, metric=args.metric, target=args.target,
        rule=args.rule, quantile=args.quantile, threshold=args.threshold, cell_line_key=args.cell_line_key,
        exclude_lines=args.exclude_lines, layer=args.layer, adapt=not args.no_adapt, seed=args.seed,
        **options,
    )
    write_h5ad(cells, args.out, args.cells, args.overwrite)
    print(f"{res.drug}: {res.n_shared_genes} shared genes ({res.n_genes} used), {res.n_train_lines} bulk lines, "
          f"excluded {res.excluded_lines}; wrote obs {res.obs_keys} to {args.out}")


SUBCOMMANDS = [_pretrain, _embed, _methods, _demo, _annotate, _cluster, _bench, _drug_response, _federated]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scssl", description="Self-supervised learning for single-cell RNA-seq")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from scssl.data import DataError
    from scssl.distributed import shutdown

    try:
        args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, KeyError, ValueError) as err:
        # scssl's errors name the bad input or setting and the fix; --verbose shows the traceback.
        if args.verbose:
            raise
        # str() of a KeyError is the repr of its message; print the message itself.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
