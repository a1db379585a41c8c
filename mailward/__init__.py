"""Mailward: milter and policy services for Postfix + Dovecot."""

__version__ = "0.1.0"
