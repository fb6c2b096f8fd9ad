"""`faqbot model export-bundled|export-onnx|pack-bundled`: move models between the engine and standard formats.

The exported sentence-transformers directory is the offline base for fine-tuning; its ONNX int8
export serves through the `onnx:` backend with onnxruntime and no torch (docs/models.md). A model
fine-tuned from it packs back into the engine's 4-bit file and serves as `bundled:<file>`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from admin.cli.common import settings_from
from admin.errors import CommandError
from faq import load_kb


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
        raise CommandError(f"{model_dir} is not a model directory (no config.json); "
                           "run `faqbot model export-bundled --out DIR` first")
    started = time.perf_counter()
    written = export_onnx(model_dir, int8=args.int8)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"in {time.perf_counter() - started:.1f}s; serve with FAQBOT_ENCODER=onnx:{written[-1]}", file=sys.stderr)
    return 0


def _read_texts(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"--calibration-texts {path}: {exc}") from exc


def cmd_pack_bundled(args: argparse.Namespace) -> int:
    from index.bundled_pack import cosine_agreement, pack_bundled

    kb_texts = [text for _faq_id, text in load_kb(settings_from(args).kb).texts()]
    calibration = _read_texts(Path(args.calibration_texts)) if args.calibration_texts else kb_texts
    calibration = [] if args.round_to_nearest else calibration[: args.max_calibration_texts]
    started = time.perf_counter()
    out = pack_bundled(Path(args.model), Path(args.out), calibration, threads=args.threads, progress=True)
    how = f"GPTQ on {len(calibration)} texts" if calibration else "rounded to nearest"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB, {how}) in {time.perf_counter() - started:.1f}s")
    if not args.no_check:
        texts = kb_texts[: args.check_texts]
        figures = cosine_agreement(Path(args.model), out, texts, threads=args.threads)
        in_sample = " (texts that also calibrated the rounding)" if set(texts) & set(calibration) else ""
        print(f"cosine agreement with {args.model} over {len(texts)} KB texts{in_sample}: mean {figures['mean']:.4f}, "
              f"1st percentile {figures['p1']:.4f}, min {figures['min']:.4f}")
    print(f"serve with FAQBOT_ENCODER=bundled:{out.resolve()} (then `faqbot calibrate`)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="export the bundled model as sentence-transformers / ONNX, pack one back")
    commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = commands.add_parser("export-bundled", help="write the bundled 4-bit model as a sentence-transformers dir")
    p.add_argument("--out", required=True, help="output directory (e.g. var/models/e5-small)")
    p.set_defaults(func=cmd_export_bundled)
    p = commands.add_parser("export-onnx", help="export a model directory to ONNX (optionally int8)")
    p.add_argument("--model", required=True, help="a sentence-transformers/BERT model directory")
    p.add_argument("--int8", action="store_true", help="also write the dynamically quantised int8 model")
    p.set_defaults(func=cmd_export_onnx)
    p = commands.add_parser("pack-bundled", help="write a model fine-tuned from the bundled one in the engine's "
                                                 "4-bit format (serves as bundled:<file>, at bundled speed)")
    p.add_argument("--model", required=True, help="a sentence-transformers directory (e.g. from faqbot finetune)")
    p.add_argument("--out", required=True, help="the engine file to write (e.g. var/models/mine/model-q4.bin)")
    p.add_argument("--calibration-texts", dest="calibration_texts",
                   help="UTF-8 file, one text per line, that calibrates the 4-bit rounding (GPTQ): wording the "
                        "model will see, e.g. its training texts (default: the KB's questions and paraphrases)")
    p.add_argument("--max-calibration-texts", dest="max_calibration_texts", type=int, default=512)
    p.add_argument("--round-to-nearest", dest="round_to_nearest", action="store_true",
                   help="no calibration: round every weight to its nearest level (loses most of a fine-tune)")
    p.add_argument("--check-texts", dest="check_texts", type=int, default=500,
                   help="compare the packed model with the float one on this many KB texts (default 500)")
    p.add_argument("--no-check", dest="no_check", action="store_true", help="skip that comparison (needs torch)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_pack_bundled)
