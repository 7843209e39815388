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


def write_h5ad(adata: ad.AnnData, out: str, input_path: str | None, overwrite: bool) -> None:
    """Write atomically; refuse to replace an existing file (the input above all) unless asked."""
    from scssl.checkpoint import atomic_write

    out_path = Path(out)
    if out_path.exists() and not overwrite:
        same = input_path is not None and out_path.resolve() == Path(input_path).resolve()
        what = "the input file" if same else "an existing file"
        raise SystemExit(f"error: --out {out} is {what}; pass --overwrite to replace it")
    atomic_write(out_path, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))


# ---- subcommands ---------------------------------------------------------------------------------
def _pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train an SSL model on an .h5ad file")
    p.add_argument("input", help=".h5ad with raw counts (or log-normalised values with loss=mse)")
    p.add_argument("--out", required=True, help="model folder to write (config.json + weights.safetensors)")
    p.add_argument("--method", default="mae", help="registered method name (see `scssl methods`)")
    p.add_argument("--layer", default=None, help="layer with the counts (default: X)")
    p.add_argument("--use-raw", action="store_true", help="read adata.raw.X")
    p.add_argument("--batch-key", default=None, help=".obs column with batch labels")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--backed", action="store_true", help="read the file out of core (backed='r')")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in OUT/checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in OUT")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method hyper-parameter")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args) -> None:
    from scssl import SSLModel

    out = Path(args.out)
    if (out / "config.json").exists() and not (args.overwrite or args.resume):
        raise SystemExit(f"error: {out} already holds a model; pass --overwrite or choose another --out")
    adata = read_h5ad(args.input, args.backed)
    model = SSLModel(adata, method=args.method, layer=args.layer, use_raw=args.use_raw,
                     batch_key=args.batch_key, **_parse_set(args.set))
    model.fit(max_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
              device=args.device, checkpoint_dir=out / "checkpoints", resume=args.resume)
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

    if Path(args.out).exists() and not args.overwrite:
        raise SystemExit(f"error: --out {args.out} exists; pass --overwrite to replace it")
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


SUBCOMMANDS = [_pretrain, _embed, _methods, _demo]


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

    try:
        args.func(args)
    except (DataError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
