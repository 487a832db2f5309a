"""Layer 2, HTTP: the aiohttp transport, bodies, failures, headers, deadlines.

Imports only ``_core``.
"""
