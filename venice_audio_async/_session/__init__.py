"""Layer 7, the session: ``AsyncSession`` and its parts (submit, resume, results, status).

Imports the layers below (``_core`` to ``_polling``).
"""
