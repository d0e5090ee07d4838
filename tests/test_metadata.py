"""Metadata: exact names, hand-made known values, and agreement with pycocotools on real COCO."""

import math

import numpy as np
import pytest
from pycocotools.coco import COCO

from coco_seg.categories import VEHICLE_TYPES
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config
from coco_seg.encoders import sample_metadata
from coco_seg.metadata import annotation_metadata, image_metadata, mask_metadata, metadata_names
from _support import write_config

CATEGORY_NAMES = {1: "person", 2: "bicycle", 3: "car", 6: "bus", 18: "dog"}

CATEGORY_MODE_NAMES = [
    "background_percent", "person_percent", "car_percent",
    "person_count", "bicycle_count", "car_count", "motorcycle_count", "airplane_count", "bus_count", "train_count",
    "truck_count", "boat_count", "vehicle_count", "total_count", "crowd_count", "small_object_count",
    "person_avg_size", "car_avg_size", "is_colored", "brightness", "image_width", "image_height",
]


def test_metadata_names_are_exactly_the_specified_ones(tmp_path):
    assert list(metadata_names(load_config())) == CATEGORY_MODE_NAMES
    supercategory = load_config(write_config(tmp_path, {"labels": {"mode": "supercategory"}}))
    expected = [n.replace("car_percent", "vehicle_percent").replace("car_avg_size", "vehicle_avg_size")
                for n in CATEGORY_MODE_NAMES]
    assert sorted(metadata_names(supercategory)) == sorted(expected)


def test_mask_percentages_on_a_hand_made_mask():
    mask = np.zeros((10, 10), np.uint8)
    mask[:2, :] = 1  # 20 person pixels
    mask[5:, 5:] = 2  # 25 car pixels
    values = mask_metadata(np.bincount(mask.ravel(), minlength=3), class_names=("background", "person", "car"))
    assert values == pytest.approx({"background_percent": 55.0, "person_percent": 20.0, "car_percent": 25.0})


def test_annotation_counts_and_sizes_on_hand_made_annotations():
    from coco_seg.annotation_checks import AREA_KEY
    from coco_seg.config import TargetClass

    # Areas as preprocess stores them (computed from the geometry; the file's own `area` is never read).

    annotations = [
        {"category_id": 1, "iscrowd": 0, AREA_KEY: 2000.0},
        {"category_id": 1, "iscrowd": 0, AREA_KEY: 1000.0},  # small (< 32² = 1024)
        {"category_id": 1, "iscrowd": 1, AREA_KEY: 5000.0},  # crowd: not an instance
        {"category_id": 3, "iscrowd": 0, AREA_KEY: 400.0},  # small
        {"category_id": 6, "iscrowd": 0, AREA_KEY: 8000.0},
        {"category_id": 2, "iscrowd": 0, AREA_KEY: 1500.0},
        {"category_id": 18, "iscrowd": 0, AREA_KEY: 3000.0},
    ]
    targets = (TargetClass("person", ("person",)), TargetClass("car", ("car",)))
    values = annotation_metadata(annotations, category_names=CATEGORY_NAMES, target_classes=targets,
                                 image_area=100 * 200)
    assert values["person_count"] == 2 and values["car_count"] == 1 and values["bus_count"] == 1
    assert values["bicycle_count"] == 1 and values["truck_count"] == 0
    assert values["vehicle_count"] == 3  # car + bus + bicycle
    assert values["total_count"] == 6 and values["crowd_count"] == 1 and values["small_object_count"] == 2
    assert values["person_avg_size"] == pytest.approx(100 * 1500.0 / 20000)
    assert values["car_avg_size"] == pytest.approx(100 * 400.0 / 20000)
    empty = annotation_metadata([annotations[5]], category_names=CATEGORY_NAMES, target_classes=targets,
                                image_area=20000)
    assert empty["person_avg_size"] == 0.0 and empty["car_avg_size"] == 0.0


def test_is_colored_is_decided_on_pixel_values():
    gray_as_rgb = np.repeat(np.random.default_rng(0).integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    assert image_metadata(gray_as_rgb, width=32, height=32)["is_colored"] is False
    colored = gray_as_rgb.copy()
    colored[:8, :8, 0] = 255
    colored[:8, :8, 1:] = 0
    assert image_metadata(colored, width=32, height=32)["is_colored"] is True
    assert image_metadata(colored[..., ::-1], width=32, height=32)["is_colored"] is True  # channel order invariant
    noisy_gray = np.clip(gray_as_rgb.astype(int) + np.random.default_rng(1).integers(-3, 4, (32, 32, 3)), 0, 255)
    assert image_metadata(noisy_gray.astype(np.uint8), width=32, height=32)["is_colored"] is False  # JPEG chroma noise


def test_brightness_is_mean_luma():
    image = np.zeros((4, 4, 3), np.uint8)
    assert image_metadata(image, width=4, height=4)["brightness"] == 0.0
    image[:] = 255
    assert image_metadata(image, width=4, height=4)["brightness"] == pytest.approx(1.0)
    image[:] = (255, 0, 0)
    assert image_metadata(image, width=4, height=4)["brightness"] == pytest.approx(0.299, abs=1e-4)


def test_unlabeled_samples_report_label_values_as_unknown():
    from coco_seg.config import TargetClass

    values = mask_metadata(None, class_names=("background", "person"))
    values |= annotation_metadata(None, category_names={}, target_classes=(TargetClass("person", ("person",)),),
                                  image_area=1)
    assert values and all(v is None for v in values.values())  # unknown: None (the engine marks it missing)


@pytest.mark.parametrize("mode", ["category", "supercategory"])
def test_metadata_equals_pycocotools_on_every_sample(tmp_path, dataset, mode):
    config = load_config(write_config(tmp_path, dataset | {"labels": {"mode": mode}}))
    split = load_labeled_split(config, "training", data_root=config.data_root)
    coco = COCO(str(config.data_root / config.splits["training"].annotations))
    names = list(metadata_names(config))
    gray_images = 0
    for sample_id in split.sample_ids:
        values = sample_metadata(split, sample_id)
        assert list(values) == names or sorted(values) == sorted(names)
        assert all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values.values())
        # Each value has exactly the type the binder declares to the engine: counts and sizes in pixels int,
        # shares float, is_colored bool (bool is an int subclass: compare types, not isinstance).
        assert {name: type(values[name]) for name in names} == metadata_names(config)
        image_id = int(sample_id)
        info = coco.imgs[image_id]
        annotations = coco.imgToAnns[image_id]
        instances = [a for a in annotations if not a["iscrowd"]]
        by_name = {c: [a for a in instances if coco.cats[a["category_id"]]["name"] == c]
                   for c in ("person",) + VEHICLE_TYPES}
        for name, found in by_name.items():
            assert values[f"{name}_count"] == len(found), (sample_id, name)
        assert values["vehicle_count"] == sum(len(by_name[v]) for v in VEHICLE_TYPES)
        assert values["total_count"] == len(instances)
        assert values["crowd_count"] == sum(a["iscrowd"] for a in annotations)
        assert values["small_object_count"] == sum(a["area"] < 32 ** 2 for a in instances)
        assert (values["image_width"], values["image_height"]) == (info["width"], info["height"])
        # Pixel shares from pycocotools masks, painted with the documented overlap rule.
        label = np.zeros((info["height"], info["width"]), np.uint8)
        for index in range(len(config.target_classes), 0, -1):
            for annotation in annotations:
                if split.class_of_category.get(annotation["category_id"]) == index:
                    label[coco.annToMask(annotation) > 0] = index
        for index, name in enumerate(config.class_names):
            assert values[f"{name}_percent"] == pytest.approx(100 * np.mean(label == index), abs=1e-9)
        for target in config.target_classes:
            areas = [a["area"] for a in instances if coco.cats[a["category_id"]]["name"] in target.coco_names]
            expected = 100 * np.mean(areas) / (info["width"] * info["height"]) if areas else 0.0
            assert values[f"{target.name}_avg_size"] == pytest.approx(expected)
        assert 0.0 <= values["brightness"] <= 1.0
        gray_images += not values["is_colored"]
    assert gray_images > 0, "both datasets hold grayscale images"
