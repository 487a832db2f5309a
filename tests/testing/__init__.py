"""Tests of the fake server."""
