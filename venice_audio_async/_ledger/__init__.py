"""Layer 5, the ledger: spend, the journal and its database, the owner lock, replay.

Imports the layers below (``_core`` to ``_rate``).
"""
