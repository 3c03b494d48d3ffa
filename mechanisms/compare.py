"""`python -m mechanisms.compare REFERENCE CANDIDATE`: the regression diff (see mechanisms/reports/compare.py)."""

from mechanisms.reports.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
