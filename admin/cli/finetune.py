"""`faqbot finetune`: its flags, turned into a typed request for admin.finetune.run (docs/finetune.md).

Exit codes: 0 trained (and deployed, with --deploy), 3 the deploy gate refused, 130 interrupted
(the last finished step is saved), 2 options that cannot work, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from admin.cli.common import add_common, command_line, settings_from
from admin.finetune.deploy import Q4_FILE, undeploy
from admin.finetune.run import FinetuneRequest, ServeAs, TrainingData, Validation, run_finetune
from admin.finetune.training import LOSSES, POOLINGS, TrainConfig, TrainingInterruptedError

EXIT_DEPLOY_REFUSED = 3
EXIT_INTERRUPTED = 130


def request_from(args: argparse.Namespace) -> FinetuneRequest:
    """The flags as one request (nothing is checked here: the run checks every option before it starts)."""
    serve_as: ServeAs = "onnx" if args.onnx else "q4" if args.q4 else "sentence-transformers"
    config = TrainConfig(
        loss=args.loss, symmetric=args.symmetric, base_weight=args.base_weight, scale=args.scale, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_ratio=args.warmup_ratio,
        max_seq_length=args.max_seq_length, freeze_embeddings=not args.train_embeddings,
        trainable_layers=args.trainable_layers, pooling=args.pooling, query_prompt=args.query_prompt,
        kb_prompt=args.kb_prompt, threads=args.threads, seed=args.seed, max_steps=args.max_steps,
        time_budget_minutes=args.time_budget,
    )
    data = TrainingData(files=tuple(args.train or ()), from_kb=args.from_kb, from_misses=args.from_misses,
                        mine_negatives=args.mine_negatives, max_examples=args.max_examples)
    validation = Validation(
        eval_kbs=tuple(args.eval_kb or ()), eval_queries=tuple(args.eval_queries or ()),
        eval_pairs=tuple(args.eval_pairs or ()), eval_max_pairs=args.eval_max_pairs, holdout=args.holdout,
        calibrate_pairs=tuple(args.calibrate_pairs or ()), calibrate_max_pairs=args.calibrate_max_pairs,
        gate_on=tuple(args.gate_on or ()), gate_tolerance=args.gate_tolerance,
    )
    return FinetuneRequest(data=data, config=config, validation=validation, base=args.base, out=args.out,
                           overwrite=args.overwrite, deploy=args.deploy, serve_as=serve_as)


def cmd_finetune(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.undeploy:
        print(undeploy(settings))
        return 0
    try:
        outcome = run_finetune(request_from(args), settings, command=command_line())
    except TrainingInterruptedError as exc:
        where = exc.checkpoint or "(no step finished: nothing saved)"
        print(f"faqbot: interrupted; weights of the last finished step are in {where} "
              "(a usable sentence-transformers model dir)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_DEPLOY_REFUSED if outcome.status == "deploy_refused" else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune the encoder on your own pairs; validate; --deploy if not worse",
                              description="Fine-tune a sentence-transformers model on CPU (docs/finetune.md).")
    add_common(p)
    data = p.add_argument_group("data")
    data.add_argument("--base", default="bundled", help="bundled (exported once into the data dir) or a model directory")
    data.add_argument("--train", type=Path, nargs="+", help="JSONL pairs/triplets/scored pairs, or TSV s1<TAB>s2<TAB>label")
    data.add_argument("--from-kb", dest="from_kb", type=Path, help="also train on the paraphrases of this KB")
    data.add_argument("--from-misses", dest="from_misses", action="store_true",
                      help="also train on resolved misses (attached to an FAQ) from the miss log")
    data.add_argument("--mine-negatives", dest="mine_negatives", action="store_true",
                      help="give each pair a hard negative the base model confuses it with: from the KB for pairs "
                           "with an FAQ id (always on for --from-kb/--from-misses), else from the other intents in "
                           "the training files")
    data.add_argument("--max-examples", dest="max_examples", type=int, help="train on a seeded sample of at most this many examples (after pairs are built)")
    data.add_argument("--out", type=Path, help="output model directory (default <data_dir>/models/finetuned-<time>)")
    data.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")

    train_group = p.add_argument_group("training (defaults finish on a 2-core CPU)")
    train_group.add_argument("--loss", choices=LOSSES, default="auto",
                             help="auto: mnrl for pairs/triplets, cosent when all examples are scored pairs")
    train_group.add_argument("--epochs", type=int, default=1)
    train_group.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    train_group.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=3e-5)
    train_group.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=0.1)
    train_group.add_argument("--max-seq-length", dest="max_seq_length", type=int, default=64,
                             help="tokens per text while training (default 64; FAQ questions are short)")
    train_group.add_argument("--train-embeddings", dest="train_embeddings", action="store_true",
                             help="also train the word-embedding matrix (250k rows for e5: 2x slower, more RAM)")
    train_group.add_argument("--trainable-layers", dest="trainable_layers", type=int,
                             help="train only the top N transformer layers (faster; default all)")
    train_group.add_argument("--symmetric", action="store_true",
                             help="MNRL both ways: each text of a pair must also find its partner among the "
                                  "batch's anchors (no extra encoding)")
    train_group.add_argument("--base-weight", dest="base_weight", type=float, default=0.0,
                             help="after training, blend the weights back toward the base's by this fraction "
                                  "(0.3: 70%% tuned + 30%% base): keeps more of what the base knew (default 0)")
    train_group.add_argument("--scale", type=float, default=20.0,
                             help="MNRL/CoSENT similarity scale, 1/temperature (default 20; e5 was pre-trained "
                                  "at 100, so its cosines sit close together)")
    train_group.add_argument("--pooling", choices=POOLINGS, help="replace the base's pooling (default: keep it)")
    train_group.add_argument("--query-prompt", dest="query_prompt", help="prefix for questions (default: the model's)")
    train_group.add_argument("--kb-prompt", dest="kb_prompt", help="prefix for KB texts (default per FAQBOT_KB_PREFIX)")
    train_group.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    train_group.add_argument("--seed", type=int, default=20240607)
    train_group.add_argument("--max-steps", dest="max_steps", type=int, help="stop after this many steps")
    train_group.add_argument("--time-budget", dest="time_budget", type=float,
                             help="stop training after this many minutes (the model is saved normally)")

    check = p.add_argument_group("validation and deploy")
    check.add_argument("--eval-kb", dest="eval_kb", type=Path, action="append",
                       help="held-out KB (repeatable, paired with --eval-queries)")
    check.add_argument("--eval-queries", dest="eval_queries", type=Path, action="append",
                       help="held-out {\"query\", \"expected\"} JSONL for the --eval-kb of the same position")
    check.add_argument("--eval-pairs", dest="eval_pairs", type=Path, nargs="+", help="held-out pair TSV files (ROC-AUC)")
    check.add_argument("--eval-max-pairs", dest="eval_max_pairs", type=int, help="seeded sample per --eval-pairs file")
    check.add_argument("--holdout", type=float, metavar="FRACTION",
                       help="keep this fraction of the training pairs out of training (grouped by text: no text in both "
                            "parts) and recalibrate both models on it; default 0.2 when the training data has 0/1 "
                            "labelled pairs and no --calibrate-pairs is given, else 0 (none)")
    check.add_argument("--calibrate-pairs", dest="calibrate_pairs", type=Path, nargs="+",
                       help="0/1 pair TSV files to recalibrate both models with (pairs sharing a text with the training "
                            "data are dropped; default: the --holdout part, else the configured KB)")
    check.add_argument("--calibrate-max-pairs", dest="calibrate_max_pairs", type=int, default=2000,
                       help="seeded sample per calibration pair set (default 2000)")
    check.add_argument("--gate-on", dest="gate_on", nargs="+", metavar="NAME",
                       help="the --eval-kb sets (by folder name, e.g. bq) whose overall accuracy gates a deploy: your "
                            "own FAQ; the others are reported only (default: every --eval-kb set gates)")
    check.add_argument("--gate-tolerance", dest="gate_tolerance", type=float, default=0.0,
                       help="accept a held-out overall-accuracy drop up to this (default 0: must not drop)")
    check.add_argument("--deploy", action="store_true",
                       help="if the gate passes: switch the encoder to the new model, rebuild + recalibrate the index")
    serving = check.add_mutually_exclusive_group()
    serving.add_argument("--onnx", action="store_true", help="with --deploy: serve it as ONNX int8 (faster on CPU)")
    serving.add_argument("--q4", action="store_true",
                         help=f"with --deploy: pack it in the bundled engine's 4-bit format ({Q4_FILE} in --out) "
                              "and serve it there: bundled speed and memory, no torch")
    check.add_argument("--undeploy", action="store_true", help="go back to the default encoder, auto or bundled (and rebuild the index)")
    p.set_defaults(func=cmd_finetune)
