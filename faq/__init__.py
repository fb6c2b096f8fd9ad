"""The knowledge base: the YAML schema, loading with line-accurate errors, and saving.

`faq` imports nothing from the other faqbot packages.
"""

from faq.loader import KBError, KBProblem, load_kb
from faq.schema import FAQ, KnowledgeBase

__all__ = ["FAQ", "KBError", "KBProblem", "KnowledgeBase", "load_kb"]
