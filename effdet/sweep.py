"""The results table of a sweep (`python run.py -m ...`): one row per job, written to <sweep dir>/summary.csv as
each job ends (a sweep stopped half-way keeps the rows of its finished jobs) and printed, best AP first, at the end.

A Hydra callback (conf/config.yaml, hydra.callbacks): it reads each job's results from the job's own output dir,
so that a job whose workers ran in other processes (hardware.num_workers > 1) reports like any other. A failed job
is a row with its error; the others still run, and the sweep exits with code 1.
"""
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from effdet.artifacts import METRICS, SWEEP_SUMMARY, TRAIN_SUMMARY
from effdet.errors import ConfigError
from effdet.summary import last_record, sweep_summary

COLUMNS = ("job", "overrides", "status", "AP", "AP50", "train_seconds", "images_per_second", "step", "error",
           "output_dir")


def job_row(number: int, overrides: List[str], output_dir: str,
            error: Optional[BaseException] = None) -> Dict[str, Any]:
    """One job's row, from what its run dir holds: the last evaluation (metrics.jsonl), the training summary."""
    row = dict.fromkeys(COLUMNS, "")
    row.update(job=number, overrides=" ".join(overrides), output_dir=output_dir,
               status="failed" if error is not None else "completed")
    if error is not None:
        row["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    metrics = last_record(os.path.join(output_dir, METRICS))
    if metrics:
        row.update(AP=round(metrics["AP"], 6), AP50=round(metrics["AP50"], 6), step=metrics["step"])
    train_path = os.path.join(output_dir, TRAIN_SUMMARY)
    if os.path.exists(train_path):
        with open(train_path) as handle:
            train = json.load(handle)
        row.update(train_seconds=round(train["seconds"], 1), images_per_second=round(train["images_per_second"], 3))
        row["step"] = row["step"] or train["step"]
    return row


def ranked(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Best AP first; jobs without an AP (failed, or not evaluated) last, in job order."""
    return sorted(rows, key=lambda row: (row["AP"] == "", -(row["AP"] or 0.0), row["job"]))


def write_summary(rows: List[Dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["job"]))


def format_table(rows: List[Dict[str, Any]]) -> str:
    shown = ("job", "AP", "AP50", "train_seconds", "images_per_second", "status", "overrides")
    cells = [[_cell(row[key]) for key in shown] + ([row["error"]] if row["error"] else []) for row in ranked(rows)]
    widths = [max([len(key)] + [len(cell[i]) for cell in cells]) for i, key in enumerate(shown)]
    lines = ["  ".join(key.ljust(width) for key, width in zip(shown, widths)).rstrip()]
    for cell in cells:
        line = "  ".join(value.ljust(width) for value, width in zip(cell, widths)).rstrip()
        lines.append(line + (f"\n      error: {cell[-1]}" if len(cell) > len(shown) else ""))
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@dataclass
class FailedJob:
    """What run.py returns for a job of a sweep that failed: Hydra then goes on with the other jobs. As a number
    (an optimising sweeper's objective) it is NaN, which Optuna records as a failed trial."""

    error: BaseException

    def __float__(self) -> float:
        return float("nan")


def objective(output_dir: str, metric: str) -> float:
    """The job's result for an optimising sweeper: `metric` of the last evaluation in its run dir."""
    metrics = last_record(os.path.join(output_dir, METRICS))
    if metrics is None:
        raise ConfigError(f"optimized_metric={metric}: the job evaluated nothing (no {METRICS} in {output_dir}); "
                          "a mode that evaluates (train with trainer.eval_after_training, train_and_eval) is needed")
    return float(metrics[metric])


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.overrides: List[List[str]] = []  # each row's job's overrides, for the commands that follow it
        self.started = time.monotonic()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.rows, self.overrides, self.started = [], [], time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = job_return._return_value if job_return.status == JobStatus.FAILED else None
        if isinstance(job_return._return_value, FailedJob):
            error = job_return._return_value.error
        row = job_row(int(config.hydra.job.num), list(job_return.overrides or []),
                      config.hydra.runtime.output_dir, error)
        self.rows.append(row)
        self.overrides.append(list(job_return.overrides or []))
        write_summary(self.rows, os.path.join(config.hydra.sweep.dir, SWEEP_SUMMARY))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.rows:
            return
        path = os.path.join(config.hydra.sweep.dir, SWEEP_SUMMARY)
        failed = sum(row["status"] == "failed" for row in self.rows)
        print(f"\nsweep of {len(self.rows)} jobs ({failed} failed), best AP first; {path}\n{format_table(self.rows)}",
              flush=True)
        print(sweep_summary(config.hydra.sweep.dir, list(zip(self.rows, self.overrides)), config,
                            time.monotonic() - self.started), flush=True)
        if failed:  # every job ran; the exit code still tells a script that some failed
            sys.exit(1)
