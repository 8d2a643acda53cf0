"""A PNG of the training curves, written at the end of a run."""
from typing import Dict, List


def plot_training_curves(history: List[Dict[str, float]], path: str) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("total_loss", "class_loss", "box_loss", "iou_loss", "learning_rate") if k in history[0]]
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    steps = [entry["step"] for entry in history]
    for axis, key in zip(axes if len(keys) > 1 else [axes], keys):
        axis.plot(steps, [entry[key] for entry in history], linewidth=1)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
