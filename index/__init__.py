"""Turning text into vectors and vectors into answers: sanitising, encoders, the FAISS index.

Imports only `faq` among faqbot's packages.
"""
