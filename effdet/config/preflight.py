"""Checks the command line's config-group choices (model=..., data=...) against conf/ before Hydra runs,
so that a typo gets the list of valid names and the closest one."""
import os
from typing import List, Optional

from effdet.errors import unknown_name_message

_HYDRA_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                           "--cfg", "-c", "--package", "-p", "--experimental-rerun"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def group_options(conf_dir: str, group: str) -> List[str]:
    folder = os.path.join(conf_dir, group)
    return sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".yaml"))


def check_group_choices(argv: List[str], conf_dir: str) -> Optional[str]:
    """An error message for the first override that picks a config-group option that does not exist."""
    if any(arg.split("=")[0] in ("--config-path", "-cp", "--config-dir", "-cd") for arg in argv):
        return None  # another config tree (a saved run's .hydra): Hydra checks it itself
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides, takes_value = [], False
    for i, arg in enumerate(argv):
        if takes_value or arg.startswith("-"):
            after_info = arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_TOPICS
            takes_value = (arg in _HYDRA_FLAGS_WITH_VALUE or after_info) and not takes_value
            continue
        overrides.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # malformed overrides: Hydra reports them with its own message
        return None
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or "." in group or group.startswith("hydra") or override.package:
            continue
        if not os.path.isdir(os.path.join(conf_dir, group)):
            continue
        choices = group_options(conf_dir, group)
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if value is not None and str(value) not in choices:
                return unknown_name_message(group, str(value), choices,
                                            where=f"the command line: {override.input_line}")
    return None
