"""The admin HTTP API (`/admin/...`, bearer token) and the app `faqbot serve` runs: `bot`'s app plus it.

May import `curation` (what the routes do) and bot, index, faq; never `cli`.
"""
