"""effdet's single entry point: `python run.py [mode=...] [group=option ...] [key=value ...]`.

See README.md. Each job: check the config → prepare the hardware → run the mode, which writes its
artifacts under the job's output dir (Hydra's run dir, with the composed config in .hydra/).
"""
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's start-up chatter out of the way

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from effdet.config import register_schema, validate  # noqa: E402
from effdet.config.preflight import check_group_choices  # noqa: E402
from effdet.errors import EffdetError  # noqa: E402
from effdet.tensorflow_env import choose_onednn  # noqa: E402

logging.getLogger("matplotlib").setLevel(logging.WARNING)
CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    try:
        choose_onednn(cfg.hardware.onednn)  # first: TensorFlow reads it once, when it loads
        validate(cfg)
        from effdet.hardware import setup_hardware
        from effdet.modes import MODES

        setup_hardware(cfg.hardware)
        run_mode = MODES.get(cfg.mode, where="mode")
        return run_mode(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    except EffdetError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    problem = check_group_choices(sys.argv[1:], CONF_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
