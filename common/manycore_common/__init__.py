"""Manycore-Mail's shared library.

One concern per module: ``config`` (the two YAML files), ``item`` (queue item format),
``queue`` (the reliable Redis queue), ``events`` (event schema), ``message`` (validation of
customer messages), ``auth`` (credential checks and throttling), ``health`` (metrics and
probes), ``lifecycle`` (signals), ``logs`` (JSON logging), ``tls`` (certificates).
"""

__version__ = "0.1.0"
