"""Sweeps (`python run.py -m`): the summary table, and a run re-made from its saved config."""
import csv
import json

import yaml

from effdet.errors import ConfigError
from effdet.provenance import check_resume
from effdet.sweep import format_table, job_row, ranked, write_summary
from tests.conftest import compose, run_cli


def fake_job(directory, ap=None, seconds=None):
    directory.mkdir(parents=True)
    if ap is not None:
        records = [{"step": 2, "AP": 0.01, "AP50": 0.02}, {"step": 4, "AP": ap, "AP50": 2 * ap}]
        (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if seconds is not None:
        (directory / "train_summary.json").write_text(json.dumps(
            {"step": 4, "seconds": seconds, "images_per_second": 8 / seconds, "stopped_early": False}))
    return str(directory)


def test_rows_come_from_each_jobs_run_dir_and_rank_by_ap_with_failures_last(tmp_path):
    rows = [job_row(0, ["trainer.lr=0.04"], fake_job(tmp_path / "0", ap=0.25, seconds=10.0)),
            job_row(1, ["trainer.lr=0.08"], fake_job(tmp_path / "1"), ConfigError("trainer.lr=-1 is too small")),
            job_row(2, ["trainer.lr=0.16"], fake_job(tmp_path / "2", ap=0.5, seconds=20.0))]
    assert rows[0]["AP"] == 0.25 and rows[0]["AP50"] == 0.5 and rows[0]["step"] == 4
    assert rows[0]["train_seconds"] == 10.0 and rows[0]["images_per_second"] == 0.8
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "ConfigError: trainer.lr=-1 is too small"
    assert [row["job"] for row in ranked(rows)] == [2, 0, 1]
    table = format_table(rows).splitlines()
    assert table[0].split()[:3] == ["job", "AP", "AP50"] and table[1].startswith("2 ") and "error: Config" in table[-1]
    write_summary(rows, tmp_path / "summary.csv")
    with open(tmp_path / "summary.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [row["job"] for row in written] == ["0", "1", "2"] and written[2]["AP"] == "0.5"


def test_resuming_with_another_model_is_refused_and_harmless_changes_are_listed(tmp_path):
    cfg = compose(["trainer.num_epochs=10"])
    assert check_resume(cfg, str(tmp_path), has_checkpoint=False, is_chief=True) == []
    more = check_resume(compose(["trainer.num_epochs=20"]), str(tmp_path), has_checkpoint=True, is_chief=True)
    assert more == ["trainer.num_epochs: 10 → 20"]
    for override, key in (("model=efficientdet-d1", "model.name"), ("data=voc", "data.num_classes")):
        try:
            check_resume(compose([override]), str(tmp_path), has_checkpoint=True, is_chief=False)
            raise AssertionError(f"{override} resumed")
        except ConfigError as error:
            assert key in str(error) and "new run dir" in str(error)


def tiny(tmp_path):
    return ["data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.image_size=96",
            "model.image_size=64", "model.fpn_cell_repeats=1", "model.box_class_repeats=1", "trainer.batch_size=4",
            "trainer.total_steps=2", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
            "trainer.deterministic=true", "data.deterministic=true", f"data.cache_dir={tmp_path / 'cache'}"]


def test_sweeps_summarise_their_jobs_and_a_job_reruns_identically_from_its_saved_config(tmp_path):
    # an Optuna search of 2 trials: the objective is each trial's final AP
    searched = run_cli("hparams_search=shapes_optuna", "hydra.sweeper.n_trials=2", *tiny(tmp_path),
                       "model.fpn_num_filters=8", f"hydra.sweep.dir={tmp_path / 'search'}", cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr[-3000:]
    result = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    with open(tmp_path / "search" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["job"], row["status"], row["step"]) for row in rows] == [("0", "completed", "2"),
                                                                          ("1", "completed", "2")]
    assert all(float(row["train_seconds"]) > 0 and float(row["images_per_second"]) > 0 for row in rows)
    assert result["best_value"] == max(float(row["AP"]) for row in rows)
    assert set(result["best_params"]) == {"optimizer.lr", "trainer.loss.gamma"}
    assert 0.02 <= result["best_params"]["optimizer.lr"] <= 0.2
    assert "sweep of 2 jobs (0 failed)" in searched.stdout
    # one end-of-run summary, the sweep's: its dir, the best trial, and what to run on it
    assert searched.stdout.count("finished in") == 1 and "effdet: sweep of 2 jobs (0 failed)" in searched.stdout
    assert f"sweep dir  {tmp_path / 'search'}" in searched.stdout
    best = max(rows, key=lambda row: float(row["AP"]))
    assert f"best: job {best['job']}, AP {float(best['AP']):.3f}" in searched.stdout
    assert f"mode=eval eval.ckpt={tmp_path / 'search' / best['job']}" in searched.stdout

    # a plain sweep whose jobs fail: each is a row with its error, and the exit code says so
    failed = run_cli("-m", *tiny(tmp_path), "model.fpn_num_filters=0,-3", f"hydra.sweep.dir={tmp_path / 'bad'}",
                     cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-3000:]
    with open(tmp_path / "bad" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["status"], row["overrides"].split()[-1]) for row in rows] == [
        ("failed", "model.fpn_num_filters=0"), ("failed", "model.fpn_num_filters=-3")]
    assert "model.fpn_num_filters=-3 is too small" in rows[1]["error"]
    assert "sweep of 2 jobs (2 failed)" in failed.stdout

    # a trial, run again from its saved config: the same losses, step for step
    job = tmp_path / "search" / "0"
    info = json.loads((job / "run_info.json").read_text())
    assert len(info["git"]["commit"]) == 40 and isinstance(info["git"]["dirty"], bool)
    assert info["versions"]["tensorflow-cpu"].startswith("2.15") and info["versions"]["horovod"] == "0.28.1"
    assert info["rerun"].endswith(f"--config-path {job / '.hydra'} --config-name config")
    rerun = run_cli("--config-path", str(job / ".hydra"), "--config-name", "config",
                    f"hydra.run.dir={tmp_path / 'rerun'}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    def losses(directory):
        return [json.loads(line)["total_loss"] for line in (directory / "train_history.jsonl").read_text().splitlines()]

    assert len(losses(job)) == 2 and losses(tmp_path / "rerun") == losses(job)

    refused = run_cli("--config-path", str(job / ".hydra"), "--config-name", "config", "model.fpn_num_filters=16",
                      f"hydra.run.dir={job}", cwd=tmp_path)
    assert refused.returncode == 2 and "model.fpn_num_filters: 8 → 16" in refused.stderr
