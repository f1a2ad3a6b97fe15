"""`python -m tests.hostile [--size ci|full]`: the hostile-input driver; prints the counts (all must be 0)."""

import sys

from tests.hostile.driver import main

sys.exit(main())
