"""`python -m db upgrade [URL]`: migrate (and seed) the database; `python -m db current [URL]`."""

from __future__ import annotations

import sys

from db.migrate import current_revision, head_revision, upgrade


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("upgrade", "current"):
        print("usage: python -m db upgrade|current [DATABASE_URL]", file=sys.stderr)
        return 2
    url = argv[1] if len(argv) > 1 else None
    if argv[0] == "upgrade":
        upgrade(url)
    print(f"database at revision {current_revision(url)} (head {head_revision()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
