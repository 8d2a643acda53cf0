"""Run modes (conf/mode/*.yaml, `mode=NAME`): each is a function (cfg, run_dir) → result dict."""
from effdet.modes.registry import MODES
from effdet.modes import evaluation, infer, inspect, show_data, train  # noqa: F401  (register their modes)

__all__ = ["MODES", "evaluation", "infer", "inspect", "show_data", "train"]
