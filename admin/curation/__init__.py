"""Keeping the knowledge base good: review misses, edit KB files in place, rebuild behind the
golden-question gate (and watch the KB), lint, stats. Served by admin.web and admin.cli.curation.

May import bot, index, faq; no other room.
"""
