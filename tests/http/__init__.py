"""Tests of the transport, bodies, deadlines, the low-level client, security, asyncio only."""
