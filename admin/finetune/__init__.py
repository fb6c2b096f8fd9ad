"""`faqbot finetune`: training data (`data`), training, validation, report and deploy (`run`), docs/finetune.md.

May import `quality` (metrics, calibration, plots) and bot, index, faq.
"""
