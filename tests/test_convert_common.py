"""The converters' shared writer and crop geometry: real tars on disk, real images."""

import importlib
import inspect
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageDraw

from crocoman.convert.common import (
    PARTIAL_SKIPS,
    SkipSample,
    choose_cameras,
    contact_sheet,
    crop_person,
    split_by_name,
    square_crop_box,
    transform_points,
    windows,
    write_converted_shards,
    write_manifest,
)
from crocoman.convert import CONVERTERS
from crocoman.data import main


def encode_number(item: int, skip_every: int) -> dict:
    """A sample per number; multiples of `skip_every` are skips, odd numbers report a dropped part."""
    if item % skip_every == 0:
        raise SkipSample("multiple", f"item {item}")
    sample = {"__key__": f"n{item:04d}", "txt": str(item).encode()}
    if item % 2:
        sample[PARTIAL_SKIPS] = [SkipSample("odd part", f"item {item}")]
    return sample


def read_numbers(split_dir: Path) -> list[int]:
    urls = sorted(str(path) for path in split_dir.glob("*.tar"))
    return [int(sample["txt"]) for sample in wds.WebDataset(urls, shardshuffle=False)]


def write(out: Path, items: list, skip_every: int = 5, settings: dict | None = None) -> dict:
    return write_converted_shards(out, "train", items, partial(encode_number, skip_every=skip_every),
                                  samples_per_shard=4, workers=1, shard_prefix="numbers", desc="test",
                                  settings=settings)


def mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.tar")}


def test_shards_hold_items_in_order_and_count_skips(tmp_path):
    summary = write(tmp_path, list(range(1, 11)))
    # shard i holds items [4i, 4i + 4): 1-4, 5-8, 9-10; 5 and 10 are skipped
    assert [shard["samples"] for shard in summary["shards"]] == [4, 3, 1]
    assert [shard["path"] for shard in summary["shards"]] == [f"train/numbers-00000{i}.tar" for i in range(3)]
    assert read_numbers(tmp_path / "train") == [1, 2, 3, 4, 6, 7, 8, 9]
    assert summary["skipped"] == {"multiple": 2, "odd part": 4}
    assert summary["skip_examples"]["multiple"] == ["item 5", "item 10"]
    assert summary["samples"] == 8 and summary["items"] == 10 and summary["resumed_shards"] == 0


def test_rerun_resumes_and_rewrites_only_missing_shards(tmp_path, capsys):
    items = list(range(1, 11))
    write(tmp_path, items)
    before = mtimes(tmp_path / "train")
    (tmp_path / "train" / "numbers-000001.tar").unlink()  # as if the run died before this shard
    (tmp_path / "train" / ".numbers-000002.tar.tmp-123").write_bytes(b"half a tar")
    capsys.readouterr()
    summary = write(tmp_path, items)
    assert "2 of 3 shards already complete" in capsys.readouterr().out
    after = mtimes(tmp_path / "train")
    assert set(after) == set(before) and after["numbers-000000.tar"] == before["numbers-000000.tar"]
    assert after["numbers-000002.tar"] == before["numbers-000002.tar"]
    assert not list((tmp_path / "train").glob(".*tmp*"))
    assert summary["resumed_shards"] == 2 and summary["skipped"] == {"multiple": 2, "odd part": 4}
    assert read_numbers(tmp_path / "train") == [1, 2, 3, 4, 6, 7, 8, 9]


def test_resume_refuses_other_inputs_and_foreign_shards(tmp_path):
    write(tmp_path, list(range(1, 11)), settings={"size": 64})
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        write(tmp_path, list(range(1, 11)), settings={"size": 128})
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        write(tmp_path, list(range(2, 12)), settings={"size": 64})
    with pytest.raises(FileExistsError, match="would not write"):
        write(tmp_path, list(range(1, 5)), settings={"size": 64})


def test_a_shard_of_skips_writes_no_tar(tmp_path):
    summary = write(tmp_path, [1, 2, 3, 4, 6, 7, 8, 9], skip_every=2)
    assert [(shard["path"], shard["samples"]) for shard in summary["shards"]] == [
        ("train/numbers-000000.tar", 2), ("train/numbers-000001.tar", 2)]
    summary = write(tmp_path / "even", [2, 4, 6, 8, 1], skip_every=2)
    assert [shard["path"] for shard in summary["shards"]] == ["train/numbers-000001.tar"]
    assert not (tmp_path / "even" / "train" / "numbers-000000.tar").exists()
    assert write(tmp_path / "even", [2, 4, 6, 8, 1], skip_every=2)["resumed_shards"] == 2


def test_manifest_totals_and_summary_line(tmp_path, capsys):
    splits = {"train": write(tmp_path, list(range(1, 11))),
              "val": write_converted_shards(tmp_path, "val", [11, 12, 15], partial(encode_number, skip_every=5),
                                            samples_per_shard=2, workers=1, shard_prefix="numbers", desc="test")}
    manifest = write_manifest(tmp_path, "numbers", splits, {"keypoints": ["a", "b"]})
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["totals"]["samples"] == 8 + 2 and manifest["totals"]["shards"] == 3 + 1
    assert manifest["skipped"] == {"multiple": 3, "odd part": 5} and manifest["keypoints"] == ["a", "b"]
    assert manifest["totals"]["bytes"] == sum(p.stat().st_size for p in tmp_path.glob("*/*.tar"))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("convert numbers: 8 train, 2 val samples in 4 shards") and "multiple: 3" in line


def test_no_items_is_an_error_that_says_what_to_check(tmp_path):
    with pytest.raises(ValueError, match="no train items"):
        write(tmp_path, [])


def dot_image(points: list[tuple[int, int]], size: tuple[int, int] = (200, 150)) -> Image.Image:
    image = Image.new("L", size, 0)
    for x, y in points:
        image.putpixel((x, y), 255)
    return image


def centroid(image: Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)
    rows, cols = np.indices(values.shape)
    return np.array([(cols * values).sum(), (rows * values).sum()]) / values.sum()


@pytest.mark.parametrize(("box", "size"), [((40, 60, 30, 30), 90), ((20, 30, 100, 100), 50), ((-20, 170, 60, 60), 60)])
def test_crop_moves_pixels_as_the_affine_moves_points(box, size):
    """A one-pixel dot lands where `A @ p` says, whether the crop zooms in, out, or leaves the image."""
    top, left, side, _ = box
    point = (left + side // 3, max(top, 0) + side // 2)
    crop, affine = crop_person(dot_image([point]), box, size)
    assert crop.size == (size, size)
    expected = transform_points(affine, np.array([point], dtype=np.float64))[0]
    np.testing.assert_allclose(centroid(crop), expected, atol=0.05 * size / side + 0.05)


def test_crop_intrinsics_keep_projections_on_the_pixels():
    K = np.array([[150.0, 0, 99.5], [0, 150.0, 74.5], [0, 0, 1]])
    point_cam_m = np.array([0.3, -0.2, 2.0])
    pixel = (K @ point_cam_m)[:2] / 2.0
    box = square_crop_box(np.array([pixel - 10, pixel + 10]), margin=0.5)
    _, affine = crop_person(dot_image([tuple(np.round(pixel).astype(int))]), box, 64)
    projected = (affine @ K @ point_cam_m)[:2] / point_cam_m[2]
    np.testing.assert_allclose(projected, transform_points(affine, pixel[None])[0], atol=1e-9)


def test_square_crop_box_from_points_boxes_and_what_it_refuses():
    top, left, height, width = square_crop_box(np.array([[10, 20, 1.0], [50, 100, 0.9], [900, 900, 0.0]]), 0.25)
    assert height == width == 120 and (left + width / 2, top + height / 2) == pytest.approx((30, 60), abs=1)
    assert square_crop_box([10, 20, 40, 80], margin=0.0) == (20, -10, 80, 80)  # centred on x = 30
    with pytest.raises(SkipSample, match="too few keypoints"):
        square_crop_box(np.array([[10, 20, 1.0], [np.nan, 5, 1.0], [3, 4, 0.0]]))
    with pytest.raises(SkipSample, match="person too small"):
        square_crop_box([10, 20, 4, 6])


def test_windows_cameras_and_val_names():
    assert windows(range(10), times=3, stride=1) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert windows(range(10), times=2, stride=3) == [[0, 3], [6, 9]]
    cameras = [f"c{i}" for i in range(9)]
    chosen = choose_cameras(cameras, 3, "seq-000001")
    assert chosen == choose_cameras(list(reversed(cameras)), 3, "seq-000001") and len(set(chosen)) == 3
    assert choose_cameras(cameras, 0, "k") == cameras
    assert split_by_name({"a": 1, "b": 2, "c": 3}, ["b"], "subject") == {"train": [1, 3], "val": [2]}
    with pytest.raises(ValueError, match=r"unknown subjects \['x'\]; known: \['a', 'b', 'c'\]"):
        split_by_name({"a": 1, "b": 2, "c": 3}, ["x"], "subject")


def draw_number(sample: dict) -> Image.Image:
    tile = Image.new("RGB", (30, 20), "white")
    ImageDraw.Draw(tile).text((2, 2), sample["txt"].decode(), fill="black")
    return tile


def test_contact_sheet_tiles_random_samples(tmp_path):
    write(tmp_path, list(range(1, 11)))
    path = contact_sheet(tmp_path, 4, draw_number)
    sheet = Image.open(path)
    assert path == tmp_path / "preview.png" and sheet.width * sheet.height == 4 * 30 * 20
    assert contact_sheet(tmp_path, 50, draw_number) and Image.open(path).width * Image.open(path).height >= 8 * 600


def test_cli_lists_converters_and_their_options(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "nosuchdataset", "--root", "x", "--out", "y"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "generic", "--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "cameras.json" in help_text and "--samples-per-shard" in help_text


@pytest.mark.parametrize("dataset", sorted(CONVERTERS))
def test_each_converters_help_shows_the_layout_it_reads(dataset: str, capsys):
    """Its docstring, the layout drawing with it, line for line as written, and the options every converter has."""
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", dataset, "--help"])
    help_text = capsys.readouterr().out
    layout = [line.rstrip() for line in inspect.cleandoc(importlib.import_module(CONVERTERS[dataset]).__doc__)
              .splitlines() if line.strip()]
    assert exit_info.value.code == 0 and len(layout) >= 5, layout
    assert all(line in help_text for line in layout), [line for line in layout if line not in help_text]
    assert "--samples-per-shard" in help_text and "--workers" in help_text
