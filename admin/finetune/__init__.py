"""`faqbot finetune`: training data, the CPU training loop, validation of base vs fine-tuned, the
report, and deploy (docs/finetune.md). `run.run_finetune` is the whole flow over a typed request.

May import `quality` (metrics, calibration, plots) and bot, index, faq; never `cli`.
"""
