"""Bundled replay API and data set used by ``backfill demo``."""
