"""The ``ronan`` command line (subcommands arrive with the CLI issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("ronan: origin attribution of AI-generated images (CLI under construction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
