"""Adapters that run timeshift inside other engines (Ray Data)."""
