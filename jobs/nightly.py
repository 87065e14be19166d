"""`ray job submit --working-dir . -- python jobs/nightly.py --date YYYY-MM-DD [--config FILE]`

Thin entry point over `raymedia run`: merges day D-1 into yesterday's user state
(or rebuilds it from the window), trains (unless --no-train; train.schedule picks
full or warm start), scores, evaluates and commits day D; prints the run summary
(JSON on stdout).
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package is importable from the working dir.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymedia.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]], prog="jobs/nightly.py"))
