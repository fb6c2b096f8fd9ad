"""`faqbot model export-bundled|export-onnx`: turn the bundled 4-bit engine into standard models.

The exported sentence-transformers directory is the offline base for fine-tuning; its ONNX int8
export serves through the `onnx:` backend with onnxruntime and no torch (docs/models.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def cmd_export_bundled(args: argparse.Namespace) -> int:
    from index.bundled_export import export_bundled

    started = time.perf_counter()
    out = export_bundled(Path(args.out), progress=True)
    print(f"wrote a sentence-transformers model to {out} in {time.perf_counter() - started:.1f}s")
    print(f"use it with: FAQBOT_ENCODER=sentence-transformers:{out}", file=sys.stderr)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from index.onnx_export import export_onnx

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(f"faqbot: error: {model_dir} is not a model directory (no config.json); "
              "run `faqbot model export-bundled --out DIR` first", file=sys.stderr)
        return 1
    started = time.perf_counter()
    written = export_onnx(model_dir, int8=args.int8)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"in {time.perf_counter() - started:.1f}s; serve with FAQBOT_ENCODER=onnx:{written[-1]}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="export the bundled model as sentence-transformers / ONNX")
    commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = commands.add_parser("export-bundled", help="write the bundled 4-bit model as a sentence-transformers dir")
    p.add_argument("--out", required=True, help="output directory (e.g. var/models/e5-small)")
    p.set_defaults(func=cmd_export_bundled)
    p = commands.add_parser("export-onnx", help="export a model directory to ONNX (optionally int8)")
    p.add_argument("--model", required=True, help="a sentence-transformers/BERT model directory")
    p.add_argument("--int8", action="store_true", help="also write the dynamically quantised int8 model")
    p.set_defaults(func=cmd_export_onnx)
