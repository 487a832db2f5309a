"""Tests of errors, models, settings, converters, validation, audio sinks."""
