"""Tests of the scheduler, the poll policy, the run-time model, hand-over."""
