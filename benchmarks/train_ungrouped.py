"""`falcon-desktop train` with each step's examples drawn freely, not grouped by length: an ablation.

`train` sorts shuffled examples by length in chunks of `CHUNK_STEPS` steps before cutting steps (less padding, see
falcon_desktop/data/batching.py). With chunks of one step, a step is a plain random draw, as in the Trainer's
sampler; `benchmarks/quality.py --compare-ungrouped` trains this way to see whether grouping changes what is learned.

    python benchmarks/train_ungrouped.py train --model M --data D ...   (the arguments of `falcon-desktop train`)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from falcon_desktop.cli import main  # noqa: E402
from falcon_desktop.data import batching  # noqa: E402

if __name__ == "__main__":
    batching.CHUNK_STEPS = 1
    sys.exit(main())
