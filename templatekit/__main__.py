"""`python -m templatekit …` runs the command line."""

from templatekit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
