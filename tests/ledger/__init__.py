"""Tests of the journal, the ledger, idempotent re-runs."""
