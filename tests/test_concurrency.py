"""--concurrent_model_calls (overlapping model calls, finished in order) and the quick exit of
local multi-process workers."""
import os
import subprocess
import sys
import threading

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import demo
from pipeline.build import plan_job
from pipeline.options import BatchPredictOptions
from pipeline.run import read_summary, run
from tests.helpers import assert_close, expected_outputs, predictions
from transforms import worker
from transforms.predict import PredictDoFn
from transforms.savedmodel import ModelConfig, SavedModelHandler


class OverlapProbe(PredictDoFn):
    """Counts the model calls running at the same moment. The first two calls wait for each
    other at a barrier: they only both get there if the DoFn runs two calls at once."""
    lock = threading.Lock()
    barrier = None
    active = peak = calls = 0

    def _call(self, serialized):
        cls = OverlapProbe
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            cls.calls += 1
            first_two = cls.calls <= 2
        try:
            if first_two:
                cls.barrier.wait()
            return super()._call(serialized)
        finally:
            with cls.lock:
                cls.active -= 1


class HeapProbe(PredictDoFn):
    """Notes, once the DoFn is set up, whether the heap is frozen and the model is in it."""
    seen: dict = {}

    def setup(self):
        import gc
        super().setup()
        HeapProbe.seen["frozen"] = worker.heap_frozen() and gc.get_freeze_count()
        HeapProbe.seen["model_tracked"] = any(o is self._holder for o in gc.get_objects())


def _options(*flags) -> BatchPredictOptions:
    return PipelineOptions(["--model", "m", "--input", "i", "--output", "o", *flags]
                           ).view_as(BatchPredictOptions)


def test_concurrent_calls_overlap_and_keep_every_record_in_order(tmp_path, demo_model_base,
                                                                 demo_model):
    demo.write_demo_data(str(tmp_path / "data"), rows=3000, shards=2)
    OverlapProbe.barrier = threading.Barrier(2, timeout=60)
    OverlapProbe.active = OverlapProbe.peak = OverlapProbe.calls = 0
    out = str(tmp_path / "out")
    _, plan = run(["--model", demo_model_base, "--input",
                   os.path.join(str(tmp_path / "data"), "*.tfrecord*"), "--output", out,
                   "--batch_size", "250", "--concurrent_model_calls", "2"],
                  predict_dofn=OverlapProbe)
    assert plan.model.concurrent_calls == 2
    assert OverlapProbe.peak == 2  # never more than asked for, and really two at once
    summary = read_summary(out)
    assert summary["predicted"] == 3000 and summary["errors"] == 0
    assert summary["model_calls"] == OverlapProbe.calls >= 3000 // 250
    got = predictions(out)
    # finished in submission order: within a shard, rows come out in record order
    for shard in {r["shard"] for r in got}:
        indices = [r["index"] for r in got if r["shard"] == shard]
        assert indices == sorted(indices) and len(indices) == len(set(indices))
    by_source = {(os.path.basename(r["shard"]), r["index"]): r["score"] for r in got}
    assert len(by_source) == 3000
    # write_demo_data: shard s holds demo_rows(1500, seed=1 + s), gzip for odd s
    sample = [(f"part-{s:05d}.tfrecord" + (".gz" if s else ""), i, row)
              for s in (0, 1)
              for i, row in enumerate(demo.demo_rows(1500, seed=1 + s, start_id=1500 * s))
              if i % 7 == 0]
    expected = expected_outputs(demo_model, [row for _, _, row in sample])
    assert_close([by_source[(name, index)] for name, index, _ in sample], expected["score"])


def test_concurrent_model_calls_rejects_non_positive_values():
    assert _options("--concurrent_model_calls=3").concurrent_model_calls == 3
    assert _options().concurrent_model_calls == 1
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            _options(f"--concurrent_model_calls={bad}")


def test_plan_marks_local_worker_processes_for_a_quick_exit(tmp_path, demo_model_base,
                                                           monkeypatch, caplog):
    demo.write_demo_data(str(tmp_path / "data"), rows=10, shards=1)
    flags = ["--model", demo_model_base, "--input", os.path.join(str(tmp_path / "data"),
                                                                 "*.csv"),
             "--output", str(tmp_path / "out")]

    def plan(*extra):
        return plan_job(PipelineOptions(flags + list(extra)).view_as(BatchPredictOptions),
                        claim=False)
    multi = plan("--direct_running_mode=multi_processing", "--direct_num_workers=2").model
    assert multi.fast_worker_exit and multi.launcher_pid == os.getpid()
    # worker processes keep TensorFlow's own pools unless told otherwise
    assert multi.intra_op_threads == 0 and multi.concurrent_calls == 1
    told = plan("--direct_running_mode=multi_processing", "--direct_num_workers=2",
                "--tf_intra_op_threads=1", "--concurrent_model_calls=2").model
    assert (told.intra_op_threads, told.concurrent_calls) == (1, 2)
    assert not plan().model.fast_worker_exit
    assert not plan("--direct_running_mode=multi_threading",
                    "--direct_num_workers=2").model.fast_worker_exit
    # as many local worker processes as cores: the operator hears it costs more than it gives
    caplog.set_level("INFO", logger="pipeline.build")
    for cores, hinted in ((2, True), (8, False)):
        caplog.clear()
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        plan("--direct_running_mode=multi_processing", "--direct_num_workers=2")
        assert ("2 local worker processes on 2 cores" in caplog.text) is hinted


@pytest.mark.parametrize("fast, launcher_pid, registers", [
    (True, -1, True),             # a worker process of the local multi-process runner
    (True, os.getpid(), False),   # the launcher itself (in-process runner): never
    (False, -1, False),
])
def test_teardown_registers_the_quick_exit_only_in_worker_processes(monkeypatch, fast,
                                                                    launcher_pid, registers):
    import atexit
    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    handler = SavedModelHandler(ModelConfig(path="m", signature="serving_default", spec=None))
    PredictDoFn(handler, 10, launcher_pid=launcher_pid if fast else None).teardown()
    assert registered == ([worker.exit_now] if registers else [])


@pytest.mark.parametrize("tail, code", [("", 0), ("raise KeyError('boom')", 1)])
def test_quick_exit_flushes_and_keeps_the_exit_code(tail, code):
    script = ("import atexit, logging, sys\n"
              "from transforms.worker import exit_now\n"
              "logging.basicConfig(stream=sys.stderr)\n"
              "atexit.register(lambda: print('finalized', flush=True))\n"
              "atexit.register(exit_now)\n"
              "sys.stdout.write('buffered output')\n"
              "logging.getLogger('w').warning('logged')\n" + tail)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          timeout=120)
    assert done.returncode == code
    assert done.stdout == "buffered output"  # flushed; the later-registered hooks never ran
    assert "logged" in done.stderr


@pytest.fixture
def unfrozen_heap(monkeypatch):
    """This process as if no job had frozen its heap yet; gc left as it was found."""
    import gc
    monkeypatch.setattr(worker, "_heap_frozen", False)
    was_enabled = gc.isenabled()
    gc.unfreeze()
    yield gc
    gc.unfreeze()
    (gc.enable if was_enabled else gc.disable)()


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_phase_pauses_the_collector_then_freezes_what_it_made_once(unfrozen_heap,
                                                                           enabled):
    gc = unfrozen_heap
    (gc.enable if enabled else gc.disable)()
    assert gc.get_freeze_count() == 0
    with worker.loading_phase():
        assert not gc.isenabled()
        made = [[i] for i in range(5000)]  # lists: objects the cyclic collector tracks
    assert gc.isenabled() is enabled  # the caller's setting comes back
    assert gc.get_freeze_count() >= len(made)
    assert not any(o is made[0] for o in gc.get_objects())  # out of the collector's reach
    frozen = gc.get_freeze_count()
    with worker.loading_phase():  # once per process: a second block changes nothing
        assert gc.isenabled() is enabled
        later = [[i] for i in range(100)]
    # nothing newly frozen (the count can only drop: another thread may free a frozen object)
    assert gc.get_freeze_count() <= frozen
    assert any(o is later[0] for o in gc.get_objects())


def test_a_job_run_freezes_the_loaded_model_before_scoring(tmp_path, demo_model_base,
                                                          unfrozen_heap):
    demo.write_demo_data(str(tmp_path / "data"), rows=20, shards=1)
    HeapProbe.seen.clear()
    run(["--model", demo_model_base, "--input", str(tmp_path / "data" / "*.csv"),
         "--output", str(tmp_path / "out")], predict_dofn=HeapProbe)
    assert HeapProbe.seen["frozen"] > 100_000  # TensorFlow, Beam and the model, by run()
    assert HeapProbe.seen["model_tracked"] is False
    assert read_summary(str(tmp_path / "out"))["predicted"] == 20
