"""`python -m tests.stoppable_job ARGS...`: `python -m pipeline ARGS...` whose Predict step
pauses at a known point, so a test can stop or kill the job there instead of polling for a
moment that may already have passed.

Before its third batch the step writes the file named by $PAUSE_MARKER (by then two batches'
predictions are staged) and sleeps; the parent waits for that file, then signals the process.
"""
import os
import sys
import time

import pipeline.run
from transforms.predict import PredictDoFn


class PauseBeforeThirdBatch(PredictDoFn):
    batches = 0

    def process(self, batch):
        cls = PauseBeforeThirdBatch
        cls.batches += 1
        if cls.batches == 3:
            with open(os.environ["PAUSE_MARKER"], "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(600)
        yield from super().process(batch)


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    real_run = pipeline.run.run
    pipeline.run.run = lambda argv: real_run(argv, predict_dofn=PauseBeforeThirdBatch)
    return pipeline.run.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
