"""A CI-sized benchmarks/soak.py: `run.py mode=train_and_eval` evaluating after every step keeps its memory flat."""
import argparse
import glob
import importlib.util
import os

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks",
                    "soak.py")
spec = importlib.util.spec_from_file_location("soak_benchmark", PATH)
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)

# A leak that returns is caught: what each evaluation kept before (a traced detector, a val dataset, a writer)
# grows a run by megabytes per evaluation; the allocator's own swings stay well under this between medians.
MAX_GROWTH_MB = 25


def test_a_short_train_and_eval_keeps_its_resident_memory_flat_over_its_evaluations(tmp_path):
    args = argparse.Namespace(
        evaluations=8, steps=8, sample_every=0.5, after=2, window=3, model="efficientdet-lite0", image_size=64,
        batch_size=2, eval_batch_size=4, train_images=16, val_images=4, cache_dir=str(tmp_path / "cache"),
        override=["model.fpn_num_filters=8", "model.fpn_cell_repeats=1", "model.box_class_repeats=1"])
    run_dir = tmp_path / "run"
    result = soak.soak(args, str(run_dir), echo=lambda text: None)
    assert soak.verdict(result, max_growth=100.0) is None, soak.verdict(result, max_growth=100.0)
    assert [e["step"] for e in result["evaluations"]] == list(range(1, 9))
    assert result["growth_mb"] < MAX_GROWTH_MB, result["evaluations"]
    # one TensorBoard file for the training scalars, one for every evaluation's
    assert len(glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*"))) == 2


def test_growth_is_measured_between_medians_from_the_chosen_evaluation_to_the_last():
    evaluations = [{"step": step, "seconds": step, "rss_mb": rss} for step, rss in enumerate([900, 1000, 1010, 1030])]
    assert soak.slope(evaluations[1:]) == 15.0
    result = soak.summarize({"returncode": 0, "evaluations": evaluations, "expected_evaluations": 4,
                             "samples": [(0, 1040)]}, after=2, window=2)
    assert (result["base_mb"], result["end_mb"], result["growth_mb"]) == (1005, 1020, 15)  # medians of 2
    assert result["growth_percent"] == 1.49 and result["single_growth_mb"] == 30 and result["peak_mb"] == 1040
    assert soak.verdict(result, max_growth=1.5) is None
    assert "grew 1.49 %" in soak.verdict(result, max_growth=1.0)
    assert "3 evaluations ended, 4" in soak.verdict({**result, "evaluations": evaluations[:3]}, max_growth=3.0)
