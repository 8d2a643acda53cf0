"""The pictures a person looks at: boxes on images, and the val images every evaluation draws."""
import glob
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data.builder import build_labeler
from effdet.data.sources import build_source
from effdet.eval.evaluate import RecordedEvaluations
from effdet.eval.pictures import PALETTE, TILE, Tile, detections_grid, draw_detections, grid_size
from effdet.hardware.workers import Workers
from effdet.model.builder import build_model
from tests.conftest import compose


def test_a_detection_is_drawn_in_its_class_colour_and_the_ground_truth_dashed():
    image = Image.new("RGB", (100, 80), (0, 0, 0))
    found = [{"box": [10, 20, 50, 60], "class_id": 2, "class": "square", "score": 0.9},
             {"box": [80, 5, 95, 30], "class_id": 1, "class": "circle", "score": 0.1}]  # below the threshold
    truth = [{"box": [55, 40, 95, 75], "class_id": 1}]
    pixels = np.asarray(draw_detections(image, found, 0.5, truth))
    assert tuple(pixels[40, 10]) == PALETTE[2] and tuple(pixels[40, 30]) == (0, 0, 0)  # an outline, not filled
    assert not (pixels[8:28, 93:97] != 0).any()  # the low-scoring detection is not drawn
    edge = pixels[75, 56:95]  # the ground truth's bottom edge: white dashes, black gaps
    assert (edge == 255).all(axis=1).sum() >= 10 and (edge == 0).all(axis=1).sum() >= 10


def test_the_grid_fits_each_image_into_its_square_and_maps_its_boxes_there():
    tall = np.full((200, 100, 3), 120, np.uint8)
    tiles = [Tile(tall, [{"box": [0, 0, 100, 200], "class_id": 0, "class": "circle", "score": 1.0}], [], "a")] + \
        [Tile(np.zeros((50, 50, 3), np.uint8), [], [], str(i)) for i in range(4)]
    grid = np.asarray(detections_grid(tiles, 0.3))
    assert (grid.shape[1], grid.shape[0]) == grid_size(5) == (4 * TILE, 2 * TILE)
    # the tall image is scaled by TILE/200 and centred: its box's left edge lands at x = TILE/4
    assert tuple(grid[TILE // 2, TILE // 4 + 1]) == PALETTE[0]
    assert tuple(grid[TILE // 2, TILE // 2]) == (120, 120, 120)


@pytest.fixture
def job(tmp_path, tiny_model_overrides):
    cfg = compose(["data=shapes", "data.synthetic.num_train=8", "data.synthetic.num_val=6",
                   "data.synthetic.image_size=128", "eval.batch_size=4", "eval.num_pictures=4",
                   "eval.max_detections=5", "infer.draw_threshold=0.0", f"data.cache_dir={tmp_path / 'cache'}",
                   *tiny_model_overrides])
    source = build_source(cfg.data)
    return cfg, build_model(cfg.model, source.num_classes), source, build_labeler(cfg.model)


def test_every_evaluation_draws_the_same_val_images_with_that_evaluations_detections(job, tmp_path):
    cfg, model, source, labeler = job
    run_dir = tmp_path / "run"
    with RecordedEvaluations(cfg, model, source, labeler, Workers(), str(run_dir)) as evaluations:
        evaluations(1)
        ids = evaluations.pictures.image_ids
        for variable in model.trainable_variables:  # another model
            variable.assign(variable * 0.5 + 0.01)
        evaluations(2)
        assert evaluations.pictures.image_ids == ids
    annotations = json.loads(open(source.val_json_file).read())
    assert ids == [image["id"] for image in annotations["images"]][:4]  # the first val images, in their order
    pictures = [np.asarray(Image.open(run_dir / "eval" / f"step_{step}" / "val_detections.png")) for step in (1, 2)]
    width, height = grid_size(4)
    assert pictures[0].shape == pictures[1].shape == (height, width, 3)
    assert (pictures[0] != pictures[1]).any()
    # and TensorBoard has the same picture at each step
    images = {}
    for path in glob.glob(str(run_dir / "tensorboard" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "eval/val_detections":
                    images[event.step] = tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()
    assert sorted(images) == [1, 2] and (images[2] == pictures[1]).all()


def test_no_pictures_with_eval_num_pictures_0(job, tmp_path):
    cfg, model, source, labeler = job
    cfg.eval.num_pictures = 0
    with RecordedEvaluations(cfg, model, source, labeler, Workers(), str(tmp_path / "run")) as evaluations:
        evaluations(1)
    assert not (tmp_path / "run" / "eval" / "step_1" / "val_detections.png").exists()
    assert (tmp_path / "run" / "eval" / "step_1" / "metrics.json").exists()
