"""Tests of AsyncSession and VeniceAudio end to end: flows, faults, closing, statistics."""
