"""effdet's single entry point: `python run.py [mode=...] [group=option ...] [key=value ...]`.

See README.md. Each job: check the config → start the workers it asks for (or be one of them) → prepare the
hardware → run the mode, which writes its artifacts under the job's one output dir (Hydra's run dir, with the
composed config in .hydra/; only rank 0 writes).
"""
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's start-up chatter out of the way

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from effdet.config import register_schema, validate  # noqa: E402
from effdet.config.preflight import check_group_choices  # noqa: E402
from effdet.errors import EffdetError  # noqa: E402
from effdet.hardware import check_hardware, setup_hardware  # noqa: E402
from effdet.hardware.launch import check_mode_workers, launch_workers, needs_launch, worker_overrides  # noqa: E402
from effdet.hardware.ranks import rank_from_env  # noqa: E402
from effdet.provenance import write_run_info  # noqa: E402
from effdet.summary import run_summary  # noqa: E402
from effdet.sweep import FailedJob, objective  # noqa: E402
from effdet.tensorflow_env import choose_onednn  # noqa: E402

logging.getLogger("matplotlib").setLevel(logging.WARNING)
CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    started = time.monotonic()
    try:
        choose_onednn(cfg.hardware.onednn)  # first: TensorFlow reads it once, when it loads
        validate(cfg)
        check_mode_workers(cfg.mode, cfg.hardware)  # before the device's needs: what the job asks may be impossible
        check_hardware(cfg.hardware)
        hydra_cfg = HydraConfig.get()
        run_dir = hydra_cfg.runtime.output_dir
        if hydra_cfg.output_subdir is not None:  # the process that wrote .hydra/: one per job, never a rank > 0
            typed = sys.argv[1:] if hydra_cfg.mode == RunMode.RUN else list(hydra_cfg.overrides.task)  # a sweep's job
            write_run_info(run_dir, typed, list(hydra_cfg.overrides.task))
        if needs_launch(cfg.hardware):  # this process starts the workers, which run the job
            result = launch_workers(cfg.hardware, run_dir, list(hydra_cfg.overrides.task))
        elif cfg.hardware.dry_run:
            print("dry run (hardware.dry_run=true): one worker, in this process; nothing started")
            return None
        else:
            result = run_worker(cfg, run_dir)
        if hydra_cfg.output_subdir is not None and hydra_cfg.mode == RunMode.RUN and not cfg.hardware.dry_run:
            # once per job (a sweep prints its own)
            print(run_summary(cfg.mode, run_dir, cfg, list(hydra_cfg.overrides.task), time.monotonic() - started),
                  flush=True)
        return objective(run_dir, cfg.optimized_metric) if cfg.optimized_metric else result
    except Exception as error:  # in a sweep, a failed job is a row of its summary and the other jobs go on
        in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        if isinstance(error, EffdetError):
            if not (getattr(error, "every_worker", False) and rank_from_env() > 0):  # the same words from each rank
                print(f"error: {error}", file=sys.stderr)
        elif in_sweep:
            logging.getLogger("run").exception("this job failed")
        else:
            raise
        if in_sweep:
            return FailedJob(error)
        sys.exit(getattr(error, "exit_code", 2))


def run_worker(cfg: DictConfig, run_dir: str):
    """This process is a worker (or the only one): its device, then the mode, in rank 0's run dir."""
    from effdet.modes import MODES
    from effdet.hardware.workers import init_workers

    setup_hardware(cfg.hardware)
    run_mode = MODES.get(cfg.mode, where="mode")
    workers = init_workers()
    # every worker writes into (and resumes from) one dir; an elastic job's were given it by run.py (a worker added
    # later must not start with a collective: the others are in Horovod's state sync)
    return run_mode(cfg, run_dir=run_dir if workers.elastic else workers.share(run_dir))


if __name__ == "__main__":
    problem = check_group_choices(sys.argv[1:], CONF_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv += worker_overrides(sys.argv[1:])
    main()
