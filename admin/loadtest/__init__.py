"""`faqbot bench` and `faqbot soak`: load against a real `faqbot serve` on a free loopback port
(started as a child process), figures printed, nothing timed in the test suite.

May import bot, index, faq; no other room (the server it measures is a separate process).
"""
