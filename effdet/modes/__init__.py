"""Run modes (conf/mode/*.yaml, `mode=NAME`): each is a function (cfg, run_dir) → result dict."""
from effdet.modes.registry import MODES
from effdet.modes import check_data, evaluation, export, infer, inspect, show_data, train  # noqa: F401  (register modes)

__all__ = ["MODES", "check_data", "evaluation", "export", "infer", "inspect", "show_data", "train"]
