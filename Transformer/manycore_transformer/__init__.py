"""Transformer: makes every message deliverable (headers, DKIM) on its way to PostfixLog."""
