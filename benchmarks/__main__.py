"""`python -m benchmarks`: every benchmark and the crash torture in one table (see benchmarks/run.py)."""

from benchmarks.run import main

raise SystemExit(main())
