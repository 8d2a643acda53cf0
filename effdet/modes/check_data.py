"""mode=check_data: the dataset doctor. Reads every train and val record of the data config and reports, before
any training, what would crash a run or make its AP wrong; exits 1 when something is an error."""
import json
import logging
import os
from typing import Any, Dict

import numpy as np

from effdet.artifacts import DATA_REPORT_JSON, DATA_REPORT_PNG
from effdet.data.builder import build_labeler
from effdet.data.check import (SIZE_BUCKETS, anchor_sizes, coverage, default_image_sizes, duplicates, scan_split,
                               suggestions, val_consistency)
from effdet.data.pipeline import list_files
from effdet.data.reader import describe_counts, distinct_corrupt, stop_reason
from effdet.data.sources import build_source
from effdet.errors import DataError
from effdet.modes.registry import MODES

log = logging.getLogger(__name__)


class DataCheckFailed(DataError):
    """mode=check_data found errors; the report is written. Exit code 1, so that a pipeline can gate on it."""

    exit_code = 1


@MODES.register("check_data")
def check_data(cfg: Any, run_dir: str) -> Dict[str, Any]:
    source = build_source(cfg.data)
    if source.fake:
        raise DataError(f"data '{source.name}' is generated in memory: it has no records to check")
    labeler = build_labeler(cfg.model)
    options = cfg.check_data
    splits = [(name, pattern, f"data.{name}_file_pattern") for name, pattern in
              (("train", source.train_file_pattern), ("val", source.val_file_pattern)) if pattern]
    if not splits:
        raise DataError(f"data '{source.name}' has neither data.train_file_pattern nor data.val_file_pattern")
    scans = {}
    for name, pattern, key in splits:
        files = list_files(pattern, key)
        with _progress(name, options.max_records) as bar:
            scans[name] = scan_split(name, files, labeler.image_size, source.num_classes, options.max_records,
                                     progress=bar.update)

    report = {"data": source.name, "model": cfg.model.name, "image_size": list(labeler.image_size),
              "num_classes": source.num_classes, "anchor_scale": float(cfg.model.anchor_scale),
              "match_threshold": labeler.match_threshold, "splits": {}, "errors": [], "warnings": []}
    consistency = val_consistency(scans["val"], source.val_json_file) \
        if "val" in scans and source.val_json_file else None
    names = dict(consistency["categories"]) if consistency else {}
    names.update(source.label_map)
    report["class_names"] = {str(k): v for k, v in sorted(names.items())}
    for name, scan in scans.items():
        report["splits"][name] = _split_report(scan, labeler, cfg.data.max_corrupt_fraction, report)
    covered_split = "train" if "train" in scans else "val"
    boxes = scans[covered_split].input_boxes()
    overall = report["splits"][covered_split]["anchor_coverage"]["all"]["coverage"]
    if overall is not None and overall < options.min_coverage:
        small = report["splits"][covered_split]["anchor_coverage"]["small"]
        report["errors"].append(
            f"{covered_split}: only {overall:.1%} of the boxes have an anchor at IoU ≥ {labeler.match_threshold} "
            f"(check_data.min_coverage={options.min_coverage}); small objects: "
            f"{_percent(small['coverage'])} of {small['boxes']}")
    report["suggestions"] = suggestions(labeler, boxes, list(options.anchor_scales),
                                        list(options.image_sizes) or default_image_sizes(labeler.image_size[0]),
                                        options.max_suggestion_boxes)
    report["suggestions"]["split"] = covered_split
    if consistency:
        report["val_consistency"] = consistency
        _check_consistency(consistency, source.val_json_file, report)
    report["duplicates"] = duplicates(list(scans.values()))
    if report["duplicates"]["across_splits"]:
        report["warnings"].append(f"{report['duplicates']['across_splits']} val image(s) are also train images "
                                  "(identical bytes): the val AP of a model trained on them is optimistic")

    log.info("the data check of %s:\n%s", source.name, format_report(report))
    with open(os.path.join(run_dir, DATA_REPORT_JSON), "w") as handle:
        json.dump(report, handle, indent=1, default=_plain)
    draw_report({name: scan.input_boxes() for name, scan in scans.items()}, report, labeler,
                os.path.join(run_dir, DATA_REPORT_PNG))
    if report["errors"]:
        raise DataCheckFailed(f"the data check found {len(report['errors'])} error(s): "
                              + "; ".join(report["errors"]) + f" (report: {os.path.join(run_dir, DATA_REPORT_JSON)})")
    return report


def _split_report(scan, labeler, max_corrupt_fraction: float, report: dict) -> dict:
    split = scan.split
    corrupt = scan.corrupt
    damaged = distinct_corrupt(corrupt)
    result = {
        "files": len(scan.files), "records": scan.records, "capped": scan.capped,
        "corrupt_records": damaged, "unparsable": scan.unparsable, "undecodable": scan.undecodable,
        "images": len(scan.source_ids), "without_objects": scan.without_objects,
        "objects": {str(k): v for k, v in sorted(scan.objects.items())},
        "bad_class_ids": {str(k): v for k, v in sorted(scan.bad_class_ids.items())},
        "degenerate_boxes": scan.degenerate_boxes, "too_small_boxes": scan.too_small_boxes,
        "corrupt_by_shard": corrupt["shards"],
    }
    boxes = scan.input_boxes()
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) if len(boxes) else np.zeros([0])
    result["box_side_px"] = {"min": _round(sides.min()) if len(sides) else None,
                             "median": _round(np.median(sides)) if len(sides) else None,
                             "max": _round(sides.max()) if len(sides) else None}
    result["anchor_coverage"] = coverage(labeler, boxes)
    if scan.bad_class_ids:
        ids = ", ".join(f"{k} ({v}×)" for k, v in sorted(scan.bad_class_ids.items())[:8])
        report["errors"].append(f"{split}: class ids outside 1..{report['num_classes']} (data.num_classes): {ids}; "
                                f"e.g. in images {', '.join(scan.bad_class_examples)}")
    problem = stop_reason(corrupt, "skip", max_corrupt_fraction)
    if problem:
        report["errors"].append(f"{split}: {problem}")
    elif damaged:
        report["warnings"].append(f"{split}: {damaged} bad record(s), which training skips (data.on_corrupt=skip)")
    if not scan.records:
        report["errors"].append(f"{split}: no record could be read")
    if scan.too_small_boxes:
        report["warnings"].append(f"{split}: {scan.too_small_boxes} box(es) are under a pixel wide or high at the "
                                  "model's input size: training drops them")
    if scan.degenerate_boxes:
        report["warnings"].append(f"{split}: {scan.degenerate_boxes} box(es) are empty, inverted or outside their "
                                  "image")
    return result


def _check_consistency(consistency: dict, val_json_file: str, report: dict) -> None:
    if consistency["records_not_in_json"]:
        report["errors"].append(f"val: {consistency['records_not_in_json']} record(s) have image ids that are not in "
                                f"{val_json_file} (e.g. {consistency['records_not_in_json_examples']}): evaluation "
                                "refuses them")
    if consistency["source_ids_not_image_ids"]:
        report["errors"].append(f"val: {consistency['source_ids_not_image_ids']} record(s) have a source id that is "
                                f"not a COCO image id (e.g. {consistency['source_ids_not_image_ids_examples']})")
    if consistency["json_images_without_record"]:
        report["errors"].append(f"val: {consistency['json_images_without_record']} image(s) of {val_json_file} have "
                                f"no record (e.g. {consistency['json_images_without_record_examples']}): AP would "
                                "be computed without them")


# --- what the user reads --------------------------------------------------------------------------------------------

def format_report(report: dict) -> str:
    size = "×".join(str(v) for v in report["image_size"])
    lines = [f"data check: {report['data']} ({report['num_classes']} classes) for {report['model']} at {size}, "
             f"anchor_scale {report['anchor_scale']:g}", ""]
    header = f"{'split':<7}{'records':>9}{'corrupt':>9}{'undecodable':>13}{'no objects':>12}{'objects':>9}" \
             f"{'bad ids':>9}{'coverage':>10}{'small':>8}{'medium':>8}{'large':>8}"
    lines.append(header)
    for name, split in report["splits"].items():
        cover = split["anchor_coverage"]
        lines.append(f"{name:<7}{split['records']:>9}{split['corrupt_records']:>9}{split['undecodable']:>13}"
                     f"{split['without_objects']:>12}{sum(split['objects'].values()):>9}"
                     f"{sum(split['bad_class_ids'].values()):>9}{_percent(cover['all']['coverage']):>10}"
                     + "".join(f"{_percent(cover[b]['coverage']):>8}" for b, _, _ in SIZE_BUCKETS))
    lines += ["", "objects per class:"]
    ids = sorted({int(k) for split in report["splits"].values() for k in split["objects"]})
    names = report["class_names"]
    width = max([len(names.get(str(i), f"class_{i}")) for i in ids] + [5])
    lines.append(f"  {'id':>4}  {'name':<{width}}" + "".join(f"{name:>9}" for name in report["splits"]))
    for i in ids:
        counts = "".join(f"{split['objects'].get(str(i), 0):>9}" for split in report["splits"].values())
        lines.append(f"  {i:>4}  {names.get(str(i), f'class_{i}'):<{width}}{counts}")
    suggested = report["suggestions"]
    scale, size_choice = suggested["anchor_scale"], suggested["image_size"]
    lines += ["", f"anchor coverage (a box is covered when an anchor overlaps it at IoU ≥ "
                  f"{report['match_threshold']}; boxes in input pixels after evaluation's resize; on "
                  f"{suggested['boxes']} {suggested['split']} boxes):"]
    lines.append("  model.anchor_scale  " + "  ".join(f"{k:g}: {_percent(v)}" for k, v in scale["coverage"].items()))
    lines.append("  model.image_size    "
                 + "  ".join(f"{k}: {_percent(v)}" for k, v in size_choice["coverage"].items()))
    if scale["best"] != scale["current"]:
        lines.append(f"  suggestion: model.anchor_scale={scale['best']:g} covers "
                     f"{_percent(scale['coverage'][scale['best']])} of the boxes "
                     f"(now {_percent(scale['coverage'][scale['current']])})")
    if size_choice["best"] != size_choice["current"]:
        lines.append(f"  second suggestion: model.image_size={size_choice['best']} covers "
                     f"{_percent(size_choice['coverage'][size_choice['best']])} at anchor_scale {scale['current']:g}")
    for name, split in report["splits"].items():
        if split["corrupt_by_shard"]:
            lines += ["", describe_counts({"split": name, "records_read": split["images"],
                                           "corrupt": split["corrupt_records"], "shards": split["corrupt_by_shard"]})]
    if "val_consistency" in report:
        found = report["val_consistency"]
        lines += ["", f"val records against the val JSON ({found['json_images']} images): "
                      f"{found['records_not_in_json']} not in it, "
                      f"{found['json_images_without_record']} without a record"]
    found = report["duplicates"]
    lines.append("duplicate images: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in found.items()
                                                  if not k.endswith("examples")))
    for kind in ("errors", "warnings"):
        if report[kind]:
            lines += ["", f"{kind}:"] + [f"  - {item}" for item in report[kind]]
    if not report["errors"]:
        lines += ["", "no errors"]
    return "\n".join(lines)


def draw_report(boxes_by_split: Dict[str, np.ndarray], report: dict, labeler, path: str) -> None:
    """Box sizes in input pixels with every level's anchor sizes over them, anchor coverage by box size, and
    objects per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from effdet.data.check import best_ious

    figure, (sizes_axis, classes_axis) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    largest = max([float(np.sqrt(np.prod(labeler.image_size)))]
                  + [float(np.sqrt(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).max())) for b in boxes_by_split.values()
                     if len(b)])
    bins = np.geomspace(1, max(largest, 2) * 1.05, 40)
    coverage_axis = sizes_axis.twinx()
    for (name, boxes), colour in zip(boxes_by_split.items(), ("tab:blue", "tab:orange")):
        if not len(boxes):
            continue
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        sizes_axis.hist(sides, bins=bins, histtype="step" if name == "val" else "stepfilled", alpha=0.6,
                        color=colour, label=f"{name} boxes")
        if name == ("train" if "train" in boxes_by_split else "val"):
            covered = best_ious(labeler, boxes) >= labeler.match_threshold
            which = np.digitize(sides, bins)
            centres, shares = [], []
            for index in range(1, len(bins)):
                inside = which == index
                if inside.sum() >= 3:
                    centres.append(np.sqrt(bins[index - 1] * bins[index]))
                    shares.append(covered[inside].mean())
            coverage_axis.plot(centres, shares, color="black", marker=".", linewidth=1,
                               label=f"{name} boxes with an anchor at IoU ≥ {labeler.match_threshold}")
    colours = plt.get_cmap("viridis")
    levels = anchor_sizes(labeler)
    for index, (level, sides) in enumerate(levels.items()):
        colour = colours(index / max(len(levels) - 1, 1))
        for octave, side in enumerate(sides):
            sizes_axis.axvline(side, color=colour, linewidth=1.4 if octave == 0 else 0.7,
                               linestyle="-" if octave == 0 else ":",
                               label=f"P{level} anchors" if octave == 0 else None)
    sizes_axis.set_xscale("log")
    sizes_axis.set_xlabel("box side, √(width × height), in input pixels")
    sizes_axis.set_ylabel("boxes")
    coverage_axis.set_ylim(0, 1.05)
    coverage_axis.set_ylabel("covered share")
    handles = sizes_axis.get_legend_handles_labels()
    more = coverage_axis.get_legend_handles_labels()
    sizes_axis.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
    size = "×".join(str(v) for v in report["image_size"])
    sizes_axis.set_title(f"boxes at {size} and anchors (anchor_scale {report['anchor_scale']:g})", fontsize=9)

    ids = sorted({int(k) for split in report["splits"].values() for k in split["objects"]})
    names = report["class_names"]
    width = 0.8 / max(len(report["splits"]), 1)
    for offset, (name, split) in enumerate(report["splits"].items()):
        classes_axis.bar(np.arange(len(ids)) + offset * width, [split["objects"].get(str(i), 0) for i in ids],
                         width=width, label=name)
    classes_axis.set_xticks(np.arange(len(ids)) + width * (len(report["splits"]) - 1) / 2)
    classes_axis.set_xticklabels([names.get(str(i), str(i)) for i in ids], rotation=45, ha="right", fontsize=7)
    classes_axis.set_title("objects per class", fontsize=9)
    classes_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _progress(split: str, total):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"check_data {split}", unit="record", dynamic_ncols=True, mininterval=1.0)


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _round(value) -> float:
    return round(float(value), 1)


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)
