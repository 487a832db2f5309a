"""Layer 2, HTTP: the aiohttp transport, bodies, failures, headers, deadlines.

Imports only ``_core``; ``_http.transport`` and ``_http.failures`` are the package's only
modules that import aiohttp, and this one does not import aiohttp.
"""
