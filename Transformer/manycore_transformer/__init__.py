"""Transformer: makes every message deliverable on its way to PostfixLog: drops recipients on
the suppression list (``suppressed`` events), then one copy per recipient with its own tagged
return path, headers and DKIM signatures."""
