"""``boxsup data check``: what a config's sources hold, and what is wrong with them, before any training.

Per source: images (usable and left out), images with masks, boxes per class, classes dropped by
the mapping, and every problem counted with one example path (a validation image without a mask
is one: a run refuses it). ``decode`` also decodes every image's
pixels and every mask (slower; catches truncated JPEGs and bad mask values).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from boxsup.data.dataset import SegmentationDataset
from boxsup.data.images import SkipCounts
from boxsup.errors import BoxSupError
from boxsup.utils.progress import progress_bar


@dataclass
class SourceReport:
    """What one source holds and what is wrong with it."""

    name: str
    role: str  # "train" or "val"
    images: int = 0
    usable: int = 0
    with_masks: int = 0
    boxes: Counter = field(default_factory=Counter)  # run class name -> boxes
    dropped: Counter = field(default_factory=Counter)  # source class name -> objects dropped by the mapping
    problems: SkipCounts = field(default_factory=SkipCounts)  # reason -> count, and one place it happened


def check_source(dataset: SegmentationDataset, role: str, decode: bool = False, progress: bool = True) -> SourceReport:
    """Read every annotation (and with ``decode`` every image and mask) of one source; count, never stop."""
    report = SourceReport(dataset.name, role, images=len(dataset.ids))
    names = ("background", *dataset.classes)
    for image_id in progress_bar(dataset.ids, desc=f"check {dataset.name}", enabled=progress, unit="img"):
        try:
            ann = dataset.checked_annotation(image_id)  # a validation image without a mask is a problem
            if decode:
                dataset.image(image_id)
                if ann.has_mask:
                    dataset.mask(image_id)
        except BoxSupError as exc:
            text = str(exc)
            report.problems.add(_reason(text), text, quiet=True)
            continue
        report.usable += 1
        report.with_masks += int(ann.has_mask)
        report.boxes.update(names[b.label] for b in ann.boxes)
        if role == "train" and not ann.boxes and not ann.has_mask:
            report.problems.add("no box and no mask (nothing to learn from)", str(dataset.image_path(image_id)), quiet=True)
    report.problems.merge(dataset.skips)
    mapping = getattr(dataset, "mapping", None)
    if mapping is not None:
        report.dropped.update(mapping.dropped)
    return report


def _reason(message: str) -> str:
    """The kind of a one-line error, without its path: 'path: what' -> 'what' (numbers kept out)."""
    what = message.split(": ", 1)[-1]
    return what.split(" (")[0][:80]


def format_report(reports: list[SourceReport], classes: tuple[str, ...]) -> str:
    """Plain-text tables: sources, boxes per class and source, problems with one example each."""
    lines = ["| source | role | images | usable | with masks | boxes | problems |", "|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r.name} | {r.role} | {r.images} | {r.usable} | {r.with_masks} | {sum(r.boxes.values())} "
                     f"| {sum(r.problems.counts.values())} |")
    lines += ["", "| class | " + " | ".join(f"{r.name} ({r.role})" for r in reports) + " |",
              "|---|" + "---|" * len(reports)]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(str(r.boxes.get(name, 0)) for r in reports) + " |")
    for r in reports:
        if r.dropped:
            dropped = ", ".join(f"{name} {n}" for name, n in r.dropped.most_common())
            lines.append(f"\n{r.name}: objects of classes this run does not use, dropped: {dropped}")
    problems = [(r, reason, n) for r in reports for reason, n in r.problems.counts.most_common()]
    lines.append("\nproblems:" if problems else "\nno problems found")
    for r, reason, n in problems:
        lines.append(f"  {r.name}: {n} x {reason}; e.g. {r.problems.examples.get(reason, '')}")
    return "\n".join(lines)
