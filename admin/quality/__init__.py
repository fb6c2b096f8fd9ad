"""How good an encoder and a threshold are: evaluation metrics, calibration fitting, Markdown/PNG
reports (docs/quality.md).

May import bot (the matcher), index, faq; no other room.
"""
