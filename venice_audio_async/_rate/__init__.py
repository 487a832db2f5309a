"""Layer 4, rate: request budgets (local and Redis), retry rule, limiters.

Imports ``_core``, ``_http`` and ``_client``.
"""
