"""The running service: settings, the matcher, the miss log, the FastAPI app and its pages.

Imports `faq` and `index`; never `admin` (admin adds its router to the app built here).
"""
