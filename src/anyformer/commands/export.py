"""``anyformer export RUN --format hf|onnx|safetensors --out DIR``: a run's model as a
Hugging Face folder (``from_pretrained`` loads it), an ONNX file checked against eager
PyTorch with ONNX Runtime, or its weights as safetensors."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from anyformer.interop.runs import export_run

    dest = export_run(args.run_dir, args.format, args.out)
    print(f"exported {args.run_dir} as {args.format}: {dest}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "export",
        help="a run's model as a Hugging Face folder, ONNX or safetensors",
        description=__doc__,
    )
    parser.add_argument("run_dir", help="the run's folder, e.g. runs/quickstart-1a2b3c4d")
    parser.add_argument(
        "--format", required=True, choices=["hf", "onnx", "safetensors"], help="what to write"
    )
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.set_defaults(func=run)
    return parser
