"""``anyformer import hf:PATH --out DIR``: a Hugging Face model saved with
``save_pretrained`` (a local folder, safetensors weights only) as an anyformer run folder
that ``anyformer generate`` and ``anyformer export`` read."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from anyformer.interop.runs import import_hf

    folder, spec = import_hf(args.source, args.out)
    print(
        f"imported {args.source}: kind={spec.kind}, d_model={spec.d_model}, "
        f"n_layers={spec.n_layers}, n_heads={spec.n_heads}\nrun folder: {folder}"
    )
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "import",
        help="a Hugging Face model folder (hf:PATH, save_pretrained) as a run folder",
        description=__doc__,
    )
    parser.add_argument(
        "source",
        help="hf:PATH, a local folder written by save_pretrained() with .safetensors "
        "weights (GPT-2, Llama, GPT-NeoX, BERT token classification, ViT image "
        "classification, T5); nothing is downloaded",
    )
    parser.add_argument("--out", default="runs", help="parent of the new run folder (default runs)")
    parser.set_defaults(func=run)
    return parser
