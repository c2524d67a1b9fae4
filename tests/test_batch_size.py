"""--batch_size auto: the tuner's rule against a simulated model, and a real pipeline run."""
import os

import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipeline import demo
from pipeline.options import BatchPredictOptions
from pipeline.run import read_summary, run
from tests.helpers import assert_close, by_key, expected_outputs, predictions
from transforms.batch_size import BatchSizeTuner


def _drive(tuner, seconds_for, calls=200):
    """Feed the tuner full-size calls whose duration `seconds_for(n)` gives; sizes used."""
    sizes = []
    for _ in range(calls):
        n = tuner.size
        sizes.append(n)
        tuner.observe(n, seconds_for(n))
        if tuner.settled:
            break
    return sizes


@pytest.mark.parametrize("overhead_s, per_record_s", [(1e-3, 1e-6), (5e-3, 1e-6),
                                                      (2e-4, 2e-6), (0.0, 1e-6)])
def test_tuner_stops_where_doubling_gains_less_than_a_tenth(overhead_s, per_record_s):
    def cost(n):
        return overhead_s + per_record_s * n

    # independently: the first size whose doubling improves records/s by less than 10%
    expected, size = None, 1024
    while size * 2 <= 32768:
        if (2 * size / cost(2 * size)) < 1.10 * (size / cost(size)):
            expected = size
            break
        size *= 2
    expected = expected or 32768
    tuner = BatchSizeTuner()
    sizes = _drive(tuner, cost)
    assert tuner.settled and tuner.size == expected
    # each size before the last is used for 4 calls: one warm-up, three measured
    assert sizes[:4] == [1024] * 4


def test_tuner_ignores_partial_chunks_and_caps_after_out_of_memory():
    tuner = BatchSizeTuner()
    for _ in range(10):
        tuner.observe(500, 0.001)  # bundle ends: smaller than the current size
    assert tuner.size == 1024 and not tuner.settled
    _drive(tuner, lambda n: 1e-3 + 1e-7 * n, calls=8)  # 2 sizes: cheap calls, keeps growing
    assert tuner.size == 4096
    tuner.cap(3000)
    assert tuner.settled and tuner.size == 3000
    tuner.observe(3000, 1e-9)
    assert tuner.size == 3000


def test_batch_size_option_accepts_auto_and_rejects_nonsense():
    def batch_size(value):
        return BatchPredictOptions(["--model", "m", "--input", "i", "--output", "o",
                                    "--batch_size", value]).batch_size
    assert batch_size("auto") == "auto"
    assert batch_size("512") == 512
    with pytest.raises(SystemExit):
        batch_size("0")


class StepClock:
    """Every model call lasts 1 ms whatever its size: bigger is always faster per record."""

    def __init__(self):
        self.now = 0

    def __call__(self):
        self.now += 1_000_000
        return self.now


def test_auto_batch_size_run_grows_its_calls_and_scores_everything(tmp_path, demo_model_base,
                                                                    demo_model):
    demo.write_demo_data(str(tmp_path / "data"), rows=60_000, shards=2)
    out = str(tmp_path / "out")
    result, plan = run(["--model", demo_model_base, "--input",
                        os.path.join(str(tmp_path / "data"), "*.tfrecord*"), "--output", out,
                        "--key_field", "id", "--batch_size", "auto"], clock=StepClock())
    assert plan.auto_batch
    summary = read_summary(out)
    assert summary["predicted"] == 60_000 and summary["errors"] == 0
    [dist] = result.metrics().query(MetricsFilter().with_name("chunk_size_records")
                                    )["distributions"]
    sizes = dist.committed
    assert sizes.count == summary["model_calls"]
    # 4 calls at the default 8192 (one warm-up, three measured), then 16384: with every call
    # lasting 1 ms, every doubling pays
    assert sizes.max == 16384
    assert summary["model_calls"] <= 4 + -(-(60_000 - 4 * 8192) // 16384) + 2
    rows = by_key(predictions(out))
    assert len(rows) == 60_000
    sample = demo.demo_rows(30_000, seed=1, start_id=0)[:300]
    expected = expected_outputs(demo_model, sample)
    assert_close([rows[r["id"]]["score"] for r in sample], expected["score"])
