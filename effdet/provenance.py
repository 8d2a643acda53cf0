"""What a run dir records about how it was made (run_info.json), and the check that a run dir is resumed only by a
job that can continue it (training_config.yaml)."""
import datetime
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from effdet.artifacts import HYDRA_DIR, RUN_INFO, TRAINING_CONFIG
from effdet.errors import ConfigError
from effdet.hardware.launch import RUN_PY

log = logging.getLogger(__name__)

REPO = os.path.dirname(RUN_PY)
PACKAGES = ("tensorflow", "tensorflow-cpu", "horovod", "hydra-core", "omegaconf", "numpy", "pycocotools")
# Keys whose change makes the checkpoints of a run dir unusable: another architecture or another class head.
RESUME_BREAKING = ("model.name", "model.backbone", "model.min_level", "model.max_level", "model.fpn_num_filters",
                   "model.fpn_cell_repeats", "model.box_class_repeats", "model.fpn_weight_method",
                   "model.num_scales", "model.aspect_ratios", "data.num_classes")


def git_state(repo: str = REPO) -> Dict[str, Any]:
    """The commit the code is at and whether tracked files differ from it; None values outside a git checkout."""
    def git(*args) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip() if commit else None,
            "dirty": None if changes is None else bool(changes.strip()),
            "changed_files": [line[3:] for line in (changes or "").splitlines()][:50]}


def versions() -> Dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_info(run_dir: str, argv: List[str], overrides: List[str]) -> Dict[str, Any]:
    hydra_dir = os.path.join(os.path.abspath(run_dir), HYDRA_DIR)
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cwd": os.getcwd(),
        "command": shlex.join(["python", RUN_PY, *argv]),
        "overrides": list(overrides),
        # the saved, composed config, run again (in a new dated dir; add hydra.run.dir=... to choose it)
        "rerun": shlex.join(["python", RUN_PY, "--config-path", hydra_dir, "--config-name", "config"]),
        "git": git_state(),
        "versions": versions(),
    }


def write_run_info(run_dir: str, argv: List[str], overrides: List[str]) -> Dict[str, Any]:
    info = run_info(run_dir, argv, overrides)
    with open(os.path.join(run_dir, RUN_INFO), "w") as handle:
        json.dump(info, handle, indent=1)
    if info["git"]["dirty"]:
        log.warning("the code differs from git commit %s (%s): this run cannot be reproduced from the commit alone",
                    (info["git"]["commit"] or "?")[:12], ", ".join(info["git"]["changed_files"][:5]))
    return info


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def check_resume(cfg: Any, run_dir: str, has_checkpoint: bool, is_chief: bool) -> List[str]:
    """Refuses to resume a run dir's checkpoints with a config that cannot continue them; logs what else changed.
    Then (rank 0) records this config as the run dir's. Returns the changes, as `key: old → new` lines."""
    path = os.path.join(run_dir, TRAINING_CONFIG)
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    changes = []
    if has_checkpoint and os.path.exists(path):
        before = flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        changed = sorted(key for key in set(before) | set(current) if before.get(key) != current.get(key))
        breaking = [key for key in changed if key in RESUME_BREAKING]
        if breaking:
            details = "; ".join(f"{key}: {before.get(key)} → {current.get(key)}" for key in breaking)
            raise ConfigError(
                f"{run_dir} holds checkpoints of another model ({details}): this config cannot resume them. Train "
                f"in a new run dir (drop hydra.run.dir=...), or change those keys back")
        changes = [f"{key}: {before.get(key)} → {current.get(key)}" for key in changed]
        if changes:
            log.info("resuming %s with changes to its config:\n  %s", run_dir, "\n  ".join(changes))
    if is_chief:
        OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), path)
    return changes
