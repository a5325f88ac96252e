"""VTAB-1K straight from built TFDS folders, without TensorFlow.

``vtab_task_splits(data_dir, task)`` -> ``{"train800", "val200", "test"}`` Sources; a Source
has ``len()`` (from dataset_info.json) and iterates ``(image uint8 HxWx3, label)`` in TFDS's
order. ``find_builders(data_dir)`` / ``scan_builders`` say which tasks are built there.
Modules: crc32c, tfrecord (framing), example (tf.train.Example), builders
(dataset_info.json, shards), slicing (split strings, read order), vtab (tasks), source.
"""

from .source import (BuilderChoice, Source, TfdsVersionWarning, find_builders, jpeg_decoder,
                     scan_builders, vtab_task_splits)
from .vtab import TASKS, TfdsTask

__all__ = ["BuilderChoice", "Source", "TASKS", "TfdsTask", "TfdsVersionWarning",
           "find_builders", "jpeg_decoder", "scan_builders", "vtab_task_splits"]
