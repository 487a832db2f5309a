"""Layer 1, the core: errors, models, outcomes, settings, clocks, audio sinks.

Imports nothing of the package above it.
"""
