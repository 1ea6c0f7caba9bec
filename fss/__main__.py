"""``python -m fss``: the same as the ``fss`` command."""

from fss.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
