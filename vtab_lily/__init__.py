"""vtab-lily: a benchmarking harness for parameter-efficient fine-tuning on VTAB-1K.

Importing the package is cheap and never touches CUDA-only extensions; the heavy pieces
live in subpackages (``vtab_lily.backbones``, ``vtab_lily.adapters``, ``vtab_lily.data``).
"""

__version__ = "0.1.0"
