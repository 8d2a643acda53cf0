"""Images/s of the training input pipeline (read, decode, augment, anchor targets, batch) for EfficientDet-D0.

    .venv/bin/python benchmarks/input_pipeline.py [--image_size 512] [--batch_size 8] [--batches 100]

Input: ~640x480 JPEGs (the shapes generator at that size: cluttered, photo-like file sizes), converted with
effdet's converter. Reference: Google automl's pipeline delivers about 100 images/s per core on similar data.
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--no_malloc_tuning", action="store_true", help="keep glibc's default malloc settings")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "effdet-bench-input"))
    args = parser.parse_args()

    from effdet.hardware.host_memory import keep_large_buffers_in_heap

    tuned = not args.no_malloc_tuning and keep_large_buffers_in_heap()  # as run.py does (hardware.malloc_tuning)
    import tensorflow as tf

    from effdet.data.convert.coco import convert_coco
    from effdet.data.pipeline import Augmentation, InputPipeline
    from effdet.data.shapes import annotations_path, ensure_shapes, images_dir
    from effdet.data.targets import AnchorLabeler

    root = ensure_shapes(args.work_dir, seed=1, num_train=args.num_images, num_val=8, image_size=(480, 640))
    prefix = os.path.join(root, "bench-tfrecord", "train")
    if not tf.io.gfile.glob(prefix + "-*"):
        convert_coco(images_dir(root, "train"), annotations_path(root, "train"), prefix, num_shards=8)
    sizes = [os.path.getsize(os.path.join(images_dir(root, "train"), f)) for f in os.listdir(images_dir(root, "train"))]

    size = (args.image_size, args.image_size)
    labeler = AnchorLabeler(size, 3, 7, 3, [1.0, 2.0, 0.5], 4.0)
    pipeline = InputPipeline(prefix + "-*", labeler, Augmentation(0.1, 2.0), seed=0)
    iterator = iter(pipeline.train(args.batch_size))
    for _ in range(args.warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    images_per_second = args.batches * args.batch_size / elapsed
    cores = len(os.sched_getaffinity(0))
    print(f"input pipeline, D0 targets at {size[0]}x{size[1]}, batch {args.batch_size}, "
          f"{len(sizes)} JPEGs 640x480 (mean {sum(sizes) / len(sizes) / 1024:.0f} KiB), "
          f"malloc tuning {'on' if tuned else 'off'}")
    print(f"images/s: {images_per_second:.1f} on {cores} cores = {images_per_second / cores:.1f} per core "
          f"(automl: ~100 per core; target >= 150 per core)")


if __name__ == "__main__":
    main()
