"""Tests of request budgets (local, Redis), the limiter, the retry rule, learned limits."""
