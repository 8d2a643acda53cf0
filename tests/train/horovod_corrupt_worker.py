"""Run by test_corrupt_input.py under `horovodrun -np 2`: the tiny detector trained on two shards, one per
worker, the second damaged; with data.on_corrupt=skip, then stop, then skip with a low fraction."""
import json
import os
import pathlib
import sys

from effdet.data.reader import CorruptDataError
from effdet.hardware.workers import init_workers
from tests.train.test_corrupt_input import trainer_on
from tests.train.test_trainer import fit


def main(pattern, out_dir):
    out = pathlib.Path(out_dir)
    workers = init_workers(use_horovod=True)
    results = {}
    trainer, data = trainer_on(out / "skip", pattern, "skip", max_fraction=0.5, workers=workers)
    results["skip"] = {"step": fit(trainer, data)[0]["step"], "corrupt": trainer.corrupt_summary()}
    for case, on_corrupt, fraction in (("stop", "stop", 0.5), ("fraction", "skip", 0.1)):
        trainer, data = trainer_on(out / case, pattern, on_corrupt, max_fraction=fraction, total_steps=50,
                                   workers=workers)
        try:
            fit(trainer, data)
            results[case] = {"step": int(trainer.step), "message": "not stopped", "checkpoint": ""}
        except CorruptDataError as error:
            results[case] = {"step": int(trainer.step), "message": str(error),
                             "checkpoint": trainer.manager.latest_checkpoint or ""}
    with open(os.path.join(out_dir, f"rank{workers.rank}.json"), "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
