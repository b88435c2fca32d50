"""``ImageFolderDataModule`` on photos as users have them: EXIF-rotated, grayscale, 16-bit, palette,
transparent, CMYK, tiny, huge, broken, and whole photos with person boxes."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from body.camera import project
from datamodules import ImageFolderDataModule
from datamodules.images import collate_photos

SIZE = 32
RED, BLUE = (255, 0, 0), (0, 0, 255)


def portrait() -> Image.Image:
    """40 x 64, red upper half, blue lower half: which way is up shows in any crop of it."""
    image = Image.new("RGB", (40, 64), BLUE)
    image.paste(RED, (0, 0, 40, 32))
    return image


def write_photos(folder: Path) -> None:
    folder.mkdir()
    # A phone photo: the sensor's pixels stored sideways, EXIF orientation 6 ("rotate 90 clockwise to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    portrait().transpose(Image.Transpose.ROTATE_90).save(folder / "phone.jpg", exif=exif, quality=95)
    portrait().convert("L").save(folder / "gray.png")
    portrait().convert("P").save(folder / "palette.png")
    portrait().convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    transparent = np.array(portrait().convert("RGBA"))
    transparent[48:, :, 3] = 0  # the bottom quarter transparent: grey, not whatever colour it stores
    Image.fromarray(transparent).save(folder / "transparent.png")
    deep = np.zeros((64, 40), np.uint16)
    deep[:32] = 60000  # 16-bit grey: bright top, black bottom (not clipped to white everywhere)
    Image.fromarray(deep).save(folder / "deep.png")
    Image.new("RGB", (1, 2), (10, 200, 10)).save(folder / "tiny.png")
    huge = Image.new("RGB", (4000, 6400), BLUE)
    huge.paste(RED, (0, 0, 4000, 3200))
    huge.save(folder / "huge.jpg", quality=80)
    (folder / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    portrait().save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:400])
    (folder / "notes.png").write_text("not an image")
    (folder / "album").mkdir()
    portrait().save(folder / "album" / "phone.png")  # same stem as phone.jpg, in a subfolder


def items(folder: Path, **kwargs) -> dict[str, dict]:
    module = ImageFolderDataModule(str(folder), image_size=SIZE, num_workers=0, **kwargs)
    dataset = module.predict_dataloader().dataset
    return {dataset[i]["key"]: dataset[i] for i in range(len(dataset))}


def test_photos_are_upright_rgb_and_broken_files_are_reported(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos")
    read = items(tmp_path / "photos")
    broken = {"empty", "truncated", "notes"}
    assert set(read) == {"phone", "gray", "palette", "cmyk", "transparent", "deep", "tiny", "huge", "album/phone"} | broken
    for key, item in read.items():
        assert item["image"].shape == (1, 3, SIZE, SIZE) and item["image"].dtype == torch.uint8
        assert bool(item["valid"].all()) == (key not in broken) and bool(item["error"]) == (key in broken)
    assert "Truncated" in read["truncated"]["error"] or "truncated" in read["truncated"]["error"]
    # Portraits fill the square's middle columns: red above, blue below, whatever the file's form.
    column = SIZE // 2
    for key in ("phone", "palette", "cmyk", "transparent", "huge", "album/phone"):
        pixels = read[key]["image"][0, :, :, column].T.int()  # (rows, RGB)
        assert read[key]["photo_size"] == ((40, 64) if key != "huge" else (4000, 6400)), key
        assert (pixels[2] - torch.tensor(RED)).abs().max() < 40, key
        assert (pixels[20] - torch.tensor(BLUE)).abs().max() < 40, key
    grey = read["transparent"]["image"][0, :, 28, column].int()
    assert (grey - 128).abs().max() < 20  # transparency over grey
    gray, deep = read["gray"]["image"][0, :, :, column].int(), read["deep"]["image"][0, :, :, column].int()
    assert (gray[0, 2], gray[0, 20]) == (76, 29) and (gray[0] == gray[1]).all()  # luma of red and blue
    assert deep[0, 2] > 220 and deep[0, 20] < 10
    assert (read["tiny"]["image"][0, :, SIZE // 2, SIZE // 2].int() - torch.tensor([10, 200, 10])).abs().max() < 10


def test_each_boxed_person_is_an_input_in_the_photos_camera(tmp_path: Path) -> None:
    """Two boxes of a 200 x 100 photo: each input is its square (box plus margin), and its K is the photo's
    camera seen through the crop, so a point of the photo's camera lands where the crop shows it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.new("RGB", (200, 100), (0, 0, 0))
    photo.paste(RED, (20, 20, 60, 90))
    photo.paste((0, 255, 0), (120, 10, 160, 70))
    photo.save(folder / "group.jpg", quality=95)
    boxes = [[20, 20, 40, 70], [120, 10, 40, 60]]
    (folder / "group.json").write_text(json.dumps(boxes))
    (folder / "nobody.png").write_bytes((folder / "group.jpg").read_bytes())
    (folder / "nobody.json").write_text("[]")
    (folder / "bad_box.png").write_bytes((folder / "group.jpg").read_bytes())
    (folder / "bad_box.json").write_text(json.dumps([[1, 2, 3]]))
    read = items(folder, box_margin=0.25, focal_ratio=1.5)
    assert "no person" in read["nobody"]["error"] and "[x, y, w, h]" in read["bad_box"]["error"]
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare/group.jpg").write_bytes((folder / "group.jpg").read_bytes())
    (tmp_path / "bare/group.json").write_text(json.dumps(boxes[1]))  # one box, not in a list
    bare = items(tmp_path / "bare", box_margin=0.25, focal_ratio=1.5)["group"]
    assert bare["image"].shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(bare["box"][0], read["group"]["box"][1])
    group = read["group"]
    assert group["boxed"] and group["image"].shape == (2, 3, SIZE, SIZE)
    centre = group["image"][:, :, SIZE // 2, SIZE // 2].int()
    assert (centre[0] - torch.tensor(RED)).abs().max() < 30 and (centre[1] - torch.tensor([0, 255, 0])).abs().max() < 30
    photo_K = group["photo_K"]
    torch.testing.assert_close(photo_K, torch.tensor([[300.0, 0, 99.5], [0, 300.0, 49.5], [0, 0, 1]], dtype=torch.float64))
    for person, (x, y, w, h) in enumerate(boxes):
        side = max(w, h) * 1.5
        torch.testing.assert_close(group["box"][person], torch.tensor([x + (w - side) / 2, y + (h - side) / 2, side, side]))
        # A point seen at the box's top-left corner and at its centre (OpenCV pixel centres: -0.5).
        points = torch.tensor([[x - 0.5, y - 0.5], [x + w / 2 - 0.5, y + h / 2 - 0.5]], dtype=torch.float64)
        rays = torch.cat([points, torch.ones(2, 1, dtype=torch.float64)], 1) @ torch.linalg.inv(photo_K).T * 3.0
        in_crop = project(rays[None], group["K"][person].double()[None])[0]
        scale = SIZE / side
        expected = torch.tensor([[(side - w) / 2 * scale, (side - h) / 2 * scale], [SIZE / 2, SIZE / 2]]) - 0.5
        torch.testing.assert_close(in_crop.float(), expected, atol=1e-3, rtol=0)

    batch = collate_photos(list(read.values()))
    assert batch["key"] == ["bad_box", "group_0", "group_1", "nobody"]
    assert batch["valid"].tolist() == [False, True, True, False] and batch["photo"].tolist() == [0, 1, 1, 2]
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["photo_K"].shape == (3, 3, 3)


@pytest.mark.parametrize("content", ['{"x": 1}', "[[1, 2, 3, -4]]", "[1, 2, 3, NaN]", "not json"])
def test_malformed_box_files_name_the_file_and_the_format(tmp_path: Path, content: str) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    portrait().save(folder / "person.png")
    (folder / "person.json").write_text(content)
    error = items(folder)["person"]["error"]
    assert "person.json" in error and ("[x, y, w, h]" in error or "unreadable" in error)
