"""The performance suite: ``python -m vtab_lily.bench`` (not part of pytest).

Items (each with its target and MET / NOT MET in ``leaderboards/bench-<device>.md``):
1. Lily's efficient form vs the naive expert-by-expert mixture (``lily_forms``);
2. ViT-B/16 training steps per adapter and 3. ours vs HF PEFT's Lily (``train_steps``);
4. a Vim-S step and the selective scan vs its peers (``vim_scan``);
5. decoded cache vs JPEG decoding (``data_speed``); 6. evaluation throughput (``eval_speed``).
Public API: :func:`run_suite`, ``ITEMS``, :func:`sizes_for`. The GPU device check (issue 13) is
separate: ``python -m vtab_lily.bench.device_check`` (``device_check.py``, ``device_parts.py``).
"""

from .sizes import PRESETS, Sizes, sizes_for
from .suite import ITEMS, run_suite

__all__ = ["ITEMS", "PRESETS", "Sizes", "run_suite", "sizes_for"]
