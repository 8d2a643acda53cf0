import csv
import os
import subprocess
import sys
from typing import Dict, List

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the kernels run.py chooses by default (hardware.onednn)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(REPO, "conf")
REFERENCE = os.path.join(REPO, "tests", "reference")  # automl's figures: tests/reference/README.md


def reference_params() -> Dict[str, dict]:
    """tests/reference/params.tsv, keyed by variant."""
    with open(os.path.join(REFERENCE, "params.tsv")) as handle:
        return {row["variant"]: row for row in csv.DictReader(handle, delimiter="\t")}


def reference_d0_variables() -> Dict[str, tuple]:
    """Name → shape of every variable of automl's EfficientDet-D0 checkpoints."""
    shapes = {}
    with open(os.path.join(REFERENCE, "efficientdet-d0.variables.tsv")) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            shapes[row["name"]] = tuple(int(d) for d in row["shape"].split("x")) if row["shape"] else ()
    return shapes


def group_options(group: str) -> List[str]:
    """The options of conf/<group>/ (its .yaml files; a subfolder such as model/base holds shared parts)."""
    from effdet.config.preflight import group_options as options

    return options(CONF_DIR, group)


def model_variants() -> List[str]:
    return group_options("model")


def compose(overrides=()):
    """The job config that `python run.py <overrides>` would get."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from effdet.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def run_cli(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Runs `python run.py args...` as a user would, capturing its output."""
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def tiny_model_overrides():
    """A config small enough for a forward pass in well under a second."""
    return ["model.image_size=128", "model.fpn_num_filters=16", "model.fpn_cell_repeats=1",
            "model.box_class_repeats=1"]


@pytest.fixture
def closed_writers(monkeypatch):
    """A list that gets one entry each time a TensorBoard writer made from now on is closed."""
    import tensorflow as tf

    closed, create = [], tf.summary.create_file_writer

    def spied(*args, **kwargs):
        writer = create(*args, **kwargs)
        close = writer.close
        writer.close = lambda: closed.append(True) or close()
        return writer

    monkeypatch.setattr(tf.summary, "create_file_writer", spied)
    return closed
