"""`python -m benchmarks.mutants`: plant every curated mutant in a copy of the tree and run the tests that must
catch it (see benchmarks/mutants/__init__.py)."""

from benchmarks.mutants import main

raise SystemExit(main())
