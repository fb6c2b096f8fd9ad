"""How good an encoder and a threshold are: evaluation metrics, calibration fitting, Markdown/PNG
reports (docs/quality.md). Pure computation over the real matcher; no printing, no flags.

May import bot (the matcher), index, faq; no other room.
"""
