"""`ray job submit --working-dir . -- python jobs/backfill.py --start YYYY-MM-DD --end YYYY-MM-DD [--config FILE]`

Thin entry point over `raymedia backfill`: parses arguments, runs the package, prints
where the outputs went (JSON on stdout).
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package is importable from the working dir.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymedia.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]], prog="jobs/backfill.py"))
