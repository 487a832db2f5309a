"""Layer 6, polling: the scheduler, the poll policy and the run-time model.

Imports the layers below (``_core`` to ``_ledger``).
"""
