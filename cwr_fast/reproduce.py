"""`python -m cwr_fast.reproduce`: the paper's study end to end, under the name README and tests use.
The study lives in cwr_fast.study (the runner is cwr_fast.study.reproduce); `--help` describes it."""

from cwr_fast.study.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main())
