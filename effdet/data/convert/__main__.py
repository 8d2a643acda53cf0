"""python -m effdet.data.convert coco|voc ... — converts a dataset to sharded TFRecords.

  python -m effdet.data.convert coco --image_dir train2017 \
      --object_annotations_file annotations/instances_train2017.json \
      --output_file_prefix tfrecord/train --num_shards 32 \
      [--caption_annotations_file annotations/captions_train2017.json] [--num_workers N]
  python -m effdet.data.convert voc --data_dir VOCdevkit/VOC2012 --set train \
      --output_file_prefix tfrecord/voc-train --num_shards 8 [--label_map labels.json] [--num_workers N]

Writes <prefix>-00000-of-000NN.tfrecord ..., label_map.json and <prefix basename>.summary.json next to them,
and prints the summary table. A malformed annotation file or a missing directory exits with 2 and one line.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SHARDS = 32


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m effdet.data.convert",
                                     description="Convert a detection dataset to sharded tf.Example TFRecords.")
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="{coco,voc}")

    def common(sub):
        sub.add_argument("--output_file_prefix", required=True,
                         help="path prefix of the shards: tfrecord/train → tfrecord/train-00000-of-00032.tfrecord")
        sub.add_argument("--num_shards", type=_positive_int, default=DEFAULT_SHARDS,
                         help=f"number of output files (default {DEFAULT_SHARDS})")
        sub.add_argument("--num_workers", type=_positive_int, default=None,
                         help="processes reading images (default min(CPUs, 8)); the output does not depend on it")

    coco = commands.add_parser("coco", help="a dataset in COCO instances format (any category ids)")
    coco.add_argument("--image_dir", required=True, help="directory the images' file_name are relative to")
    coco.add_argument("--object_annotations_file", required=True, help="COCO instances JSON")
    coco.add_argument("--caption_annotations_file", default=None, help="COCO captions JSON (adds image/caption)")
    common(coco)

    voc = commands.add_parser("voc", help="a dataset in Pascal VOC layout (JPEGImages/, Annotations/, ImageSets/)")
    voc.add_argument("--data_dir", required=True, help="e.g. VOCdevkit/VOC2012")
    voc.add_argument("--set", dest="split", default="train", help="image set: train, val, trainval... (default train)")
    voc.add_argument("--label_map", default=None,
                     help='JSON {"<id>": "<name>"}; default: the 20 VOC classes with ids 1..20')
    common(voc)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import ConversionError
    from .summary import format_table

    try:
        if args.dataset == "coco":
            from .coco import convert_coco

            summary = convert_coco(args.image_dir, args.object_annotations_file, args.output_file_prefix,
                                   args.num_shards, num_workers=args.num_workers,
                                   caption_file=args.caption_annotations_file)
        else:
            from .voc import convert_voc

            summary = convert_voc(args.data_dir, args.split, args.output_file_prefix, args.num_shards,
                                  num_workers=args.num_workers, label_map=args.label_map)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no shards were left behind", file=sys.stderr)
        return 130
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
