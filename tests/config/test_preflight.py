from effdet.config.preflight import check_group_choices
from tests.conftest import CONF_DIR


def test_valid_choices_pass():
    assert check_group_choices(["model=efficientdet-d3", "data=coco", "trainer.batch_size=4"], CONF_DIR) is None


def test_unknown_choice_names_the_group_valid_options_and_closest():
    message = check_group_choices(["model=efficientdet-lite9"], CONF_DIR)
    assert "unknown model 'efficientdet-lite9'" in message
    assert "efficientdet-d0" in message and "efficientdet-lite4" in message
    assert "Did you mean 'efficientdet-lite" in message


def test_every_value_of_a_sweep_is_checked():
    assert "efficientdet-d77" in check_group_choices(["-m", "model=efficientdet-d0,efficientdet-d77"], CONF_DIR)


def test_flags_and_their_values_are_not_overrides():
    assert check_group_choices(["--config-name", "config", "-m", "data=coco"], CONF_DIR) is None
    assert check_group_choices(["--cfg", "job", "model=nope"], CONF_DIR) is not None


def test_another_config_tree_is_left_to_hydra():
    assert check_group_choices(["--config-path", "/somewhere/.hydra", "model=whatever"], CONF_DIR) is None
