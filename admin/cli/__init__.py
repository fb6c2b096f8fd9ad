"""`faqbot`: a thin command line over the same objects the server uses (`main` in admin.cli.main).

May import every admin room.
"""
