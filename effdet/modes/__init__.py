"""Run modes (conf/mode/*.yaml, `mode=NAME`): each is a function (cfg, run_dir) → result dict."""
from effdet.modes.registry import MODES
from effdet.modes import inspect  # noqa: F401  (registers "inspect")

__all__ = ["MODES", "inspect"]
