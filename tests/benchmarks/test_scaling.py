"""The accounting behind benchmarks/scaling.py's "where a step's time went" lines."""
import importlib.util
import os
import threading
import time

import pytest

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks",
                    "scaling.py")
spec = importlib.util.spec_from_file_location("scaling_benchmark", PATH)
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def test_a_step_splits_into_the_busiest_thread_the_others_and_waiting():
    split = scaling.cpu_split(({"1": 1.0, "2": 0.5}, 10.0), ({"1": 5.0, "2": 1.5, "3": 0.5}, 16.0), steps=2)
    assert split == {"compute": 2.0, "other_threads": 0.75, "waiting": 0.25}  # 3: a thread born in the window


def test_thread_cpu_seconds_sees_a_thread_that_works():
    ids, stop = [], threading.Event()

    def spin():
        ids.append(str(threading.get_native_id()))
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    worker.start()
    while not ids:
        time.sleep(0.01)
    before = scaling.thread_cpu_seconds()
    time.sleep(0.5)
    after = scaling.thread_cpu_seconds()
    stop.set()
    worker.join()
    assert after[ids[0]] - before.get(ids[0], 0.0) >= 0.1


def test_the_lockstep_ceiling_is_the_slower_workers_rate_times_the_workers():
    # cores at 4.0 and 3.0 images/s side by side, one worker alone at 4.0: lockstep allows 2 × 3.0 of 2 × 4.0
    assert scaling.lockstep_ceiling([4.0, 3.0], one=4.0) == pytest.approx(0.75)
    assert scaling.lockstep_ceiling([3.0, 3.0, 3.0], one=3.0) == pytest.approx(1.0)
