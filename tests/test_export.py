"""`crowdtk export`: the package each labeling tool opens (Label Studio, CVAT, LabelMe, crops) holds the images and
their regions."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
from conftest import export_package

from crowdtk.data import read_image
from crowdtk.formats import read_regions
from crowdtk.labeling import INSTRUCTION


def test_labelstudio_package(labeled):
    out = export_package(labeled, "labelstudio")
    config = ET.parse(out / "config.xml").getroot()
    assert config.find("Image").attrib == {"name": "image", "value": "$image", "zoom": "true"}
    kp = config.find("KeyPointLabels")
    assert kp.get("name") == "kp" and kp.get("toName") == "image" and kp.find("Label").get("value") == "head"
    assert config.find("Header").get("value") == INSTRUCTION
    tasks = json.loads((out / "tasks.json").read_text())
    _, regions = read_regions(labeled["regions"])
    assert len(tasks) == len(regions)
    for task, entry in zip(tasks, regions):
        assert task["data"]["crowdtk_id"] == entry.id and (out / task["data"]["image"]).is_file()
        rects = task["predictions"][0]["result"]
        assert len(rects) == len(entry.regions)
        for rect, region in zip(rects, entry.regions):
            v = rect["value"]
            assert (
                0 <= v["x"] < 100
                and 0 <= v["y"] < 100
                and v["x"] + v["width"] <= 100 + 1e-9
                and v["y"] + v["height"] <= 100 + 1e-9
            )
            assert (
                abs(v["x"] * entry.width / 100 - region.x0) < 1e-9
                and abs(v["width"] * entry.width / 100 - (region.x1 - region.x0)) < 1e-9
            )


def test_cvat_package(labeled):
    out = export_package(labeled, "cvat")
    root = ET.parse(out / "annotations.xml").getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    kinds = {label.findtext("name"): label.findtext("type") for label in root.iter("label")}
    assert kinds["head"] == "points" and kinds["region"] == "rectangle"
    _, regions = read_regions(labeled["regions"])
    images = root.findall("image")
    assert len(images) == len(regions)
    for image, entry in zip(images, regions):
        assert (out / "images" / image.get("name")).is_file()
        assert (int(image.get("width")), int(image.get("height"))) == (entry.width, entry.height)
        for box, region in zip(image.findall("box"), entry.regions):
            assert box.get("label") == "region"
            assert (float(box.get("xtl")), float(box.get("xbr"))) == (region.x0, region.x1)
            assert 0 <= float(box.get("ytl")) < float(box.get("ybr")) <= entry.height


def test_labelme_package(labeled):
    out = export_package(labeled, "labelme")
    _, regions = read_regions(labeled["regions"])
    files = sorted((out / "images").glob("*.json"))
    assert len(files) == len(regions)
    for file in files:
        record = json.loads(file.read_text())
        assert (file.parent / record["imagePath"]).is_file()
        entry = next(e for e in regions if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
        assert (record["imageWidth"], record["imageHeight"]) == (entry.width, entry.height)
        rects = [s for s in record["shapes"] if s["shape_type"] == "rectangle"]
        assert [(r["points"][0][0], r["points"][1][0]) for r in rects] == [(g.x0, g.x1) for g in entry.regions]


def test_crops_package(labeled):
    out = export_package(labeled, "crops")
    index = json.loads((out / "index.json").read_text())
    _, regions = read_regions(labeled["regions"])
    assert len(index["images"]) == len(regions)
    for record, entry in zip(index["images"], regions):
        image = read_image(entry.image)
        for crop in record["regions"]:
            png = cv2.cvtColor(cv2.imread(str(out / crop["crop"])), cv2.COLOR_BGR2RGB)
            assert png.shape[:2] == (crop["y1"] - crop["y0"], crop["x1"] - crop["x0"])
            np.testing.assert_array_equal(png, image[crop["y0"] : crop["y1"], crop["x0"] : crop["x1"]])
            assert (crop["x"], crop["y"]) == (crop["x0"], crop["y0"])
