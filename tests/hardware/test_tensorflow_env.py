"""hardware.onednn becomes TF_ENABLE_ONEDNN_OPTS, before TensorFlow loads and never over the user's own value."""
import os
import sys

from effdet.tensorflow_env import ONEDNN, choose_onednn


def test_sets_the_variable_when_tensorflow_is_not_loaded_yet(monkeypatch):
    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert choose_onednn(False) is None
    assert os.environ[ONEDNN] == "0"


def test_the_users_value_wins(monkeypatch):
    monkeypatch.setenv(ONEDNN, "0")
    assert choose_onednn(True) is None
    assert os.environ[ONEDNN] == "0"


def test_too_late_once_tensorflow_is_loaded_says_what_to_do(monkeypatch):
    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    problem = choose_onednn(True)
    assert "hardware.onednn=true was not applied" in problem and f"export {ONEDNN}=1" in problem
    assert ONEDNN not in os.environ
