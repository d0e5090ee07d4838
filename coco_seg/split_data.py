"""The data types of a split: what preprocess hands the engine (SplitData, in PreprocessResponse.data), its
samples (SampleRecord), the samples left out (BadSample) and the error that refuses data (DataError)."""

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from coco_seg.config import Config
from coco_seg.index_cache import Annotations, LazyAnnotations


class DataError(ValueError):
    """The data a config points at cannot be used; the message names the config key, sample id and file."""


@dataclass(frozen=True)
class BadSample:
    sample_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.sample_id} ({self.file}): {self.reason}"

    def as_json(self) -> dict[str, str]:
        return {"sample_id": self.sample_id, "file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class SampleRecord:
    """What preprocess knows about one sample, before anything is decoded."""

    sample_id: str
    file: str  # the image file's path (a str: preprocess makes 100k+ records, and pathlib objects cost 10x more)
    image_id: Optional[int] = None  # None for unlabeled images
    width: Optional[int] = None  # as annotated (original pixels)
    height: Optional[int] = None
    annotation_source: Annotations = ()  # the annotations, or where the index cache keeps them

    @property
    def path(self) -> Path:
        return Path(self.file)

    @property
    def annotations(self) -> tuple[dict, ...]:
        source = self.annotation_source
        return source.load() if isinstance(source, LazyAnnotations) else source


@dataclass
class SplitData:
    """One split: its samples in order, what was skipped, and how to read category ids. Held in PreprocessResponse."""

    name: str
    labeled: bool
    config: Config  # the config it was selected with; decoding follows the same one
    records: dict[str, SampleRecord]
    class_of_category: dict[int, int]  # COCO category id → target class 1..K (this file's ids)
    category_names: dict[int, str]  # COCO category id → name (this file's categories)
    found: int  # candidate samples before skipping (kept + skipped)
    skipped: list[BadSample] = field(default_factory=list)
    ignored_annotations: list[str] = field(default_factory=list)  # annotations tied to no image
    annotations_path: Optional[Path] = None  # None for the unlabeled split
    images_dir: Optional[Path] = None
    refused: list[BadSample] = field(default_factory=list)  # on_bad_sample: error — the problems that stopped it
    # Samples that passed preprocess but failed to decode in this process, by id (filled by coco_seg.samples).
    failed_at_decode: dict[str, BadSample] = field(default_factory=dict)
    report_path: Optional[Path] = None  # the bad-sample report, once written
    # Identifies this split in the per-process sample cache (object ids can be reused after garbage collection).
    cache_token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    @property
    def sample_ids(self) -> list[str]:
        return list(self.records)

    @property
    def kept(self) -> int:
        """Candidates that passed the checks (before ``sample_limit_per_split``): found - skipped - refused."""
        return self.found - len(self.skipped) - len(self.refused)
