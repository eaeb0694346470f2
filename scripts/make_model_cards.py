"""Regenerate MODEL_CARDS/ from the variant table (`--check` fails when a committed card is stale)."""

import sys

from fastfcn_hub.model_cards import main

if __name__ == "__main__":
    sys.exit(main())
