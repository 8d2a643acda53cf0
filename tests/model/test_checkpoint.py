"""Checkpoint loading: Google automl's TF1 name-based checkpoints (full detector, EMA, EfficientNet
backbone, fine-tuning to another number of classes), the project's own object-based checkpoints, and
automl-style export.

The automl checkpoints are synthesised from the reference list of EfficientDet-D0 variable names and
shapes (tests/reference/efficientdet-d0.variables.tsv), with seeded random values, so that every
assertion about "which value landed in which variable" can fail."""

import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import CheckpointError
from effdet.model import EfficientDet
from effdet.model.builder import create_variables
from effdet.model.checkpoint import (EMA_SUFFIX, export_name_based, load_weights, model_checkpoint,
                                     save_weights, variable_key, write_name_based_checkpoint)
from tests.conftest import reference_d0_variables

D0_VARIABLE_COUNT = 709
BACKBONE = "efficientnet-b0/"
CLASS_PREDICT = "class_net/class-predict/"
TRAINING_STATE = {
    "global_step": np.array(12345, np.int64),
    "efficientnet-b0/stem/conv2d/kernel/Momentum": np.zeros((3, 3, 3, 32), np.float32),
}
# The ImageNet classifier head of an EfficientNet-B0 checkpoint, which the detector does not use.
BACKBONE_HEAD = {
    "efficientnet-b0/head/conv2d/kernel": (1, 1, 320, 1280),
    "efficientnet-b0/head/tpu_batch_normalization/gamma": (1280,),
    "efficientnet-b0/head/tpu_batch_normalization/beta": (1280,),
    "efficientnet-b0/head/tpu_batch_normalization/moving_mean": (1280,),
    "efficientnet-b0/head/tpu_batch_normalization/moving_variance": (1280,),
    "efficientnet-b0/head/dense/kernel": (1280, 1000),
    "efficientnet-b0/head/dense/bias": (1000,),
}


# --- helpers -----------------------------------------------------------------------------------------------

def random_values(shapes, seed):
    """Seeded float32 values for each name: scaled so that a forward pass stays finite (positive
    variances, gammas near 1, small weights)."""
    rng = np.random.default_rng(seed)
    values = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(0.0, 0.05, size=shape)
        values[name] = np.asarray(value, dtype=np.float32)
    return values


def d0(num_classes=90):
    model = EfficientDet("efficientdet-d0", "efficientnet-b0", num_classes=num_classes)
    create_variables(model)
    return model


def tiny(num_classes=3):
    model = EfficientDet("tiny", "efficientnet-b0", num_classes=num_classes, fpn_num_filters=16,
                         fpn_cell_repeats=1, box_class_repeats=1)
    create_variables(model)
    return model


def snapshot(model):
    return {variable_key(v, model): v.numpy().copy() for v in model.variables}


def restore(model, values):
    for v in model.variables:
        v.assign(values[variable_key(v, model)])


def randomize(model, seed):
    """Gives every variable (batch-norm statistics included) a fresh seeded random value."""
    restore(model, random_values({variable_key(v, model): v.shape for v in model.variables}, seed))


def outputs(model, image):
    class_maps, box_maps = model(image, training=False)
    return [t.numpy() for t in list(class_maps) + list(box_maps)]


def assert_outputs_equal(actual, expected):
    assert len(actual) == len(expected) == 10
    for a, e in zip(actual, expected):
        assert np.isfinite(e).all()
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def assert_variables_equal(model, expected, keys=None):
    keys = set(expected) if keys is None else set(keys)
    checked = 0
    for v in model.variables:
        key = variable_key(v, model)
        if key in keys:
            np.testing.assert_array_equal(v.numpy(), expected[key], err_msg=key)
            checked += 1
    assert checked == len(keys)


def assert_clean(report, kind, loaded):
    assert report.kind == kind
    assert report.missing == []
    assert report.unexpected == []
    assert report.shape_mismatched == []
    assert report.skipped_class_head is None
    assert sorted(report.loaded) == sorted(loaded)


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    shapes = reference_d0_variables()
    assert len(shapes) == D0_VARIABLE_COUNT
    return shapes


@pytest.fixture(scope="module")
def automl_values(reference):
    return random_values(reference, seed=0)


@pytest.fixture(scope="module")
def automl_ckpt(tmp_path_factory, automl_values):
    """A full automl EfficientDet-D0 checkpoint (no EMA) with TF1 training state."""
    prefix = str(tmp_path_factory.mktemp("automl") / "model")
    return write_name_based_checkpoint(prefix, {**automl_values, **TRAINING_STATE})


@pytest.fixture(scope="module")
def image():
    return tf.constant(np.random.default_rng(7).uniform(0, 255, size=(1, 128, 128, 3)), tf.float32)


@pytest.fixture(scope="module")
def _d0_models():
    models = [d0(), d0()]
    return [(model, snapshot(model)) for model in models]


@pytest.fixture
def d0_pair(_d0_models):
    """Two D0 models (90 classes) in their freshly initialised state (different random inits)."""
    for model, initial in _d0_models:
        restore(model, initial)
    return [model for model, _ in _d0_models]


@pytest.fixture
def d0_model(_d0_models):
    """One D0 model (90 classes) in its freshly initialised state."""
    model, initial = _d0_models[0]
    restore(model, initial)
    return model


@pytest.fixture(scope="module")
def _tiny_models():
    models = [tiny(), tiny()]
    return [(model, snapshot(model)) for model in models]


@pytest.fixture
def tiny_pair(_tiny_models):
    """Two tiny 3-class models: a source with seeded random weights and a target as initialised."""
    for model, initial in _tiny_models:
        restore(model, initial)
    (source, _), (target, _) = _tiny_models
    randomize(source, seed=3)
    return source, target


# --- 1. full automl checkpoint -----------------------------------------------------------------------------

def test_full_automl_checkpoint_loads_every_variable(d0_pair, automl_ckpt, automl_values, reference, image):
    model, other = d0_pair
    before = outputs(model, image)

    report = load_weights(model, automl_ckpt)

    assert_clean(report, "automl", reference)
    assert len(report.loaded) == D0_VARIABLE_COUNT
    assert not report.used_ema
    assert len(model.variables) == D0_VARIABLE_COUNT
    assert_variables_equal(model, automl_values)

    after = outputs(model, image)
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.allclose(a, b) for a, b in zip(after, before)), "loading did not change the outputs"
    assert any(not np.allclose(a, b) for a, b in zip(after, outputs(other, image)))
    load_weights(other, automl_ckpt)
    assert_outputs_equal(outputs(other, image), after)


# --- 2. EMA ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ema_ckpt(tmp_path_factory, automl_values, reference):
    ema_values = random_values(reference, seed=1)
    tensors = {**automl_values, **{name + EMA_SUFFIX: value for name, value in ema_values.items()},
               **TRAINING_STATE}
    prefix = str(tmp_path_factory.mktemp("ema") / "model")
    return write_name_based_checkpoint(prefix, tensors), ema_values


def test_ema_checkpoint_prefers_moving_averages(d0_model, ema_ckpt, automl_values, reference):
    prefix, ema_values = ema_ckpt
    report = load_weights(d0_model, prefix)
    assert report.used_ema
    assert_clean(report, "automl", reference)
    assert_variables_equal(d0_model, ema_values)


def test_ema_checkpoint_raw_weights_on_request(d0_model, ema_ckpt, automl_values, reference):
    prefix, _ = ema_ckpt
    report = load_weights(d0_model, prefix, prefer_ema=False)
    assert not report.used_ema
    assert_clean(report, "automl", reference)
    assert_variables_equal(d0_model, automl_values)


# --- 3. EfficientNet backbone checkpoint -------------------------------------------------------------------

def test_backbone_checkpoint_loads_backbone_only(d0_model, automl_values, tmp_path):
    backbone = {name: value for name, value in automl_values.items() if name.startswith(BACKBONE)}
    head = random_values(BACKBONE_HEAD, seed=2)
    prefix = write_name_based_checkpoint(str(tmp_path / "efficientnet-b0"),
                                         {**backbone, **head, "global_step": np.array(7, np.int64)})
    before = snapshot(d0_model)

    report = load_weights(d0_model, prefix, backbone_only=True)

    assert_clean(report, "automl-backbone", backbone)
    assert_variables_equal(d0_model, backbone)
    rest = {key: value for key, value in before.items() if not key.startswith(BACKBONE)}
    assert any(key.startswith("fpn_cells/") for key in rest) and any(key.startswith("class_net/") for key in rest)
    assert len(rest) == D0_VARIABLE_COUNT - len(backbone)
    assert_variables_equal(d0_model, rest)


def test_backbone_only_from_full_detector_checkpoint(d0_model, automl_ckpt, automl_values):
    """A detector checkpoint also initialises a backbone: only its backbone part is taken."""
    before = snapshot(d0_model)
    report = load_weights(d0_model, automl_ckpt, backbone_only=True)
    backbone = {name: value for name, value in automl_values.items() if name.startswith(BACKBONE)}
    assert_clean(report, "automl-backbone", backbone)
    assert_variables_equal(d0_model, backbone)
    assert_variables_equal(d0_model, {k: v for k, v in before.items() if not k.startswith(BACKBONE)})


# --- 4. fine-tuning to another number of classes -----------------------------------------------------------

def test_other_num_classes_skips_class_predict(automl_ckpt, automl_values):
    model = d0(num_classes=6)
    before = snapshot(model)

    report = load_weights(model, automl_ckpt)

    skipped = {CLASS_PREDICT + "pointwise_kernel", CLASS_PREDICT + "bias"}
    assert report.kind == "automl"
    assert report.skipped_class_head is not None
    assert "810" in report.skipped_class_head and "54" in report.skipped_class_head
    assert report.shape_mismatched == [] and report.missing == [] and report.unexpected == []
    loaded = {name: value for name, value in automl_values.items() if name not in skipped}
    assert sorted(report.loaded) == sorted(loaded)
    assert_variables_equal(model, loaded)
    assert_variables_equal(model, {key: before[key] for key in skipped})
    assert "class head not loaded" in report.summary()


# --- 5. checkpoints that do not fit ------------------------------------------------------------------------

def test_d0_checkpoint_into_d1_raises(automl_ckpt):
    model = EfficientDet("efficientdet-d1", "efficientnet-b1", 90, fpn_num_filters=88, fpn_cell_repeats=4)
    create_variables(model)
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_weights(model, automl_ckpt)


def test_d0_checkpoint_into_tiny_model_raises(automl_ckpt, tiny_pair):
    with pytest.raises(CheckpointError, match="shapes differ") as error:
        load_weights(tiny_pair[1], automl_ckpt)
    assert "shape mismatch" in str(error.value)


def test_unrelated_checkpoint_raises(tiny_pair, tmp_path):
    prefix = write_name_based_checkpoint(str(tmp_path / "other"), {
        "resnet50/conv1/kernel": np.zeros((7, 7, 3, 64), np.float32),
        "resnet50/fc/bias": np.zeros((1000,), np.float32),
        "global_step": np.array(1, np.int64)})
    with pytest.raises(CheckpointError, match="nothing .* matches"):
        load_weights(tiny_pair[1], prefix)


# --- 6. path resolution ------------------------------------------------------------------------------------

def test_path_forms(tiny_pair, tmp_path):
    source, target = tiny_pair
    expected = snapshot(source)
    directory = tmp_path / "run"
    prefix = export_name_based(source, str(directory / "automl-1"))
    (directory / "checkpoint").write_text('model_checkpoint_path: "automl-1"\n')

    for path in (prefix, prefix + ".index", str(directory)):
        randomize(target, seed=4)
        report = load_weights(target, path)
        assert report.path == prefix
        assert report.kind == "automl"
        assert_variables_equal(target, expected)


def test_directory_resolves_to_latest_checkpoint(tiny_pair, tmp_path):
    source, target = tiny_pair
    manager = tf.train.CheckpointManager(model_checkpoint(source), str(tmp_path), max_to_keep=3)
    manager.save()
    randomize(source, seed=5)
    latest = manager.save()
    report = load_weights(target, str(tmp_path))
    assert report.kind == "effdet"
    assert report.path == latest
    assert_variables_equal(target, snapshot(source))


def test_missing_paths_raise(tiny_pair, tmp_path):
    model = tiny_pair[1]
    missing = str(tmp_path / "nowhere" / "model")
    with pytest.raises(CheckpointError, match="nowhere"):
        load_weights(model, missing)
    with pytest.raises(CheckpointError, match="nowhere"):
        load_weights(model, missing + ".index")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_weights(model, str(empty))


# --- 7. the project's own checkpoints ----------------------------------------------------------------------

def test_effdet_checkpoint_round_trip(d0_pair, tmp_path, image):
    source, target = d0_pair
    randomize(source, seed=6)
    prefix = save_weights(source, str(tmp_path / "effdet"))
    expected = outputs(source, image)
    assert any(not np.allclose(a, b) for a, b in zip(outputs(target, image), expected))

    report = load_weights(target, prefix)

    assert report.kind == "effdet"
    assert report.skipped_class_head is None
    assert sorted(report.loaded) == sorted(snapshot(source))
    assert_variables_equal(target, snapshot(source))
    assert_outputs_equal(outputs(target, image), expected)


def test_effdet_checkpoint_other_num_classes(tiny_pair, tmp_path):
    source, target = tiny_pair[0], tiny(num_classes=5)
    prefix = save_weights(source, str(tmp_path / "effdet"))
    saved, initial = snapshot(source), snapshot(target)

    report = load_weights(target, prefix)

    assert report.kind == "effdet"
    assert report.skipped_class_head is not None
    assert "27" in report.skipped_class_head and "45" in report.skipped_class_head
    predict = {key for key in initial if key.startswith(CLASS_PREDICT)}
    assert len(predict) == 3
    rest = {key: value for key, value in saved.items() if key not in predict}
    assert len(rest) == len(saved) - 3
    assert_variables_equal(target, rest)
    assert_variables_equal(target, {key: initial[key] for key in predict})
    assert sorted(report.loaded) == sorted(rest)


def test_effdet_checkpoint_as_backbone_raises(tiny_pair, tmp_path):
    source, target = tiny_pair
    prefix = save_weights(source, str(tmp_path / "effdet"))
    with pytest.raises(CheckpointError, match="effdet checkpoint"):
        load_weights(target, prefix, backbone_only=True)


def test_effdet_checkpoint_of_other_variant_raises(tiny_pair, d0_model, tmp_path):
    prefix = save_weights(tiny_pair[0], str(tmp_path / "effdet"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(d0_model, prefix)


# --- 8. automl-style export --------------------------------------------------------------------------------

def test_export_name_based_round_trip(d0_pair, tmp_path, reference, image):
    source, target = d0_pair
    randomize(source, seed=9)
    prefix = export_name_based(source, str(tmp_path / "export" / "model"))

    stored = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert {name: tuple(shape) for name, shape in stored.items()} == reference  # automl's names and shapes

    report = load_weights(target, prefix)
    assert_clean(report, "automl", reference)
    assert_variables_equal(target, snapshot(source))
    assert_outputs_equal(outputs(target, image), outputs(source, image))


# --- a failed load changes nothing ------------------------------------------------------------------------

def test_failed_name_based_load_leaves_model_unchanged(automl_ckpt, tiny_pair):
    target = tiny_pair[1]
    before = snapshot(target)
    with pytest.raises(CheckpointError):
        load_weights(target, automl_ckpt)
    assert_variables_equal(target, before)



def test_effdet_checkpoint_of_a_deeper_variant_is_refused_and_changes_nothing(tmp_path):
    deeper = EfficientDet("tiny", "efficientnet-b0", 3, fpn_num_filters=16, fpn_cell_repeats=2, box_class_repeats=1)
    create_variables(deeper)
    prefix = save_weights(deeper, str(tmp_path / "deeper"))
    target = tiny()
    create_variables(target)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match="model variables that this model lacks"):
        load_weights(target, prefix)
    assert_variables_equal(target, before)


def test_effdet_checkpoint_of_a_shallower_variant_is_refused_and_changes_nothing(tmp_path):
    shallow = tiny()
    create_variables(shallow)
    prefix = save_weights(shallow, str(tmp_path / "shallow"))
    deeper = EfficientDet("tiny", "efficientnet-b0", 3, fpn_num_filters=16, fpn_cell_repeats=2, box_class_repeats=1)
    create_variables(deeper)
    before = snapshot(deeper)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(deeper, prefix)
    assert_variables_equal(deeper, before)
