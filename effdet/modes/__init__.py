"""Run modes (conf/mode/*.yaml, `mode=NAME`): each is a function (cfg, run_dir) → result dict."""
from effdet.modes.registry import MODES
# importing each mode registers it
from effdet.modes import check_data, evaluation, export, infer, inspect, show_data, train  # noqa: F401

__all__ = ["MODES", "check_data", "evaluation", "export", "infer", "inspect", "show_data", "train"]
