"""Embedded PostgreSQL and Redis for local runs, and the keeper processes that own them."""
