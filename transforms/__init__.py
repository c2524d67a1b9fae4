"""The job's steps: reading, parsing, predicting, writing, and what they share.

In a local worker process started by a quiet launcher (see
`transforms.worker.QUIET_WORKERS_ENV`), the first import of this package starts
TensorFlow with its start-up chatter hidden, before any step's module imports it.
"""
import os as _os
import sys as _sys

from transforms import worker as _worker

if _os.environ.get(_worker.QUIET_WORKERS_ENV) == "1" and "tensorflow" not in _sys.modules:
    _worker.start_tensorflow_quietly()
