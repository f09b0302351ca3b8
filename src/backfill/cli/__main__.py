"""``python -m backfill.cli``."""

from backfill.cli import main

main()
