"""What admins do: the `faqbot` CLI, the admin HTTP routes and page, calibration, evaluation, fine-tuning.

May import every other faqbot package; nothing imports it except the entry points.
"""
