"""Keeping the knowledge base good: review misses, edit KB files in place, rebuild behind the
golden-question gate (and watch the KB), lint, stats.

The same functions serve the admin API (admin.web) and the CLI (admin.cli.curation); they raise
domain errors (faq.errors kinds), never an HTTP status. May import bot, index, faq; no other room.
"""
