"""What the dataset readers hand to the workers: one image file and its boxes in pixels."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


@dataclass
class ImageTask:
    """An image to convert. Boxes are (xmin, ymin, xmax, ymax) in pixels of the image the annotations were made
    on, already finite and of positive size; the worker clips them to the image."""

    source_id: str
    path: str
    filename: str
    width: Optional[int] = None  # the size the annotation file gives, when it gives one
    height: Optional[int] = None
    boxes: List[Tuple[float, float, float, float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    texts: List[str] = field(default_factory=list)
    is_crowd: List[int] = field(default_factory=list)
    areas: List[Optional[float]] = field(default_factory=list)  # None: the area of the clipped box
    captions: List[str] = field(default_factory=list)

    def add_object(self, box, label: int, text: str, is_crowd: int = 0, area: Optional[float] = None):
        self.boxes.append(tuple(float(v) for v in box))
        self.labels.append(int(label))
        self.texts.append(text)
        self.is_crowd.append(int(is_crowd))
        self.areas.append(None if area is None else float(area))
