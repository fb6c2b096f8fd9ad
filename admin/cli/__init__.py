"""`faqbot`: a thin command line over the same objects the server uses (`main` in admin.cli.main).

Commands parse flags into settings and typed options, call a room's functions and print; the one
mapping of errors to messages and exit codes is `admin.cli.main.main`. May import every admin room.
"""
