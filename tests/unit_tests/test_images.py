"""Images by reference: stored once by content, downscaled only when sent, bad input refused."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tmo_graph.errors import TmoGraphError
from tmo_graph.media.images import cloud_image, store_image


def _png(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_a_data_url_is_stored_once_under_its_hash(tmp_path: Path) -> None:
    url = _data_url(_png())
    first, again = store_image(url, tmp_path), store_image(url, tmp_path)
    assert first == again and Path(first.ref).read_bytes() == _png()
    assert Path(first.ref).name == f"{first.sha256}.png"
    assert len(list(tmp_path.iterdir())) == 1


def test_a_path_is_kept_as_is_with_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "view.png"
    path.write_bytes(_png())
    ref = store_image(str(path), tmp_path / "store")
    assert ref.ref == str(path.resolve()) and not (tmp_path / "store").exists()
    assert store_image(f"file://{path}", tmp_path).sha256 == ref.sha256


def test_an_http_url_passes_through_unfetched(tmp_path: Path) -> None:
    ref = store_image("https://example.com/cam.jpg", tmp_path)
    assert ref.ref == "https://example.com/cam.jpg"
    assert cloud_image(ref.ref, 768).url == "https://example.com/cam.jpg"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("data:image/png;base64,@@@", "invalid base64"),
        ("data:image/png,raw", "not a base64 data URL"),
        (_data_url(b"not an image"), "not a readable image"),
        ("/no/such/frame.jpg", "does not exist"),
    ],
)
def test_bad_images_are_refused_with_a_fix(tmp_path: Path, image: str, message: str) -> None:
    with pytest.raises(TmoGraphError, match=message):
        store_image(image, tmp_path)


def test_a_huge_frame_is_downscaled_for_the_cloud(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    Image.new("L", (10_000, 10_000), 128).save(path, format="JPEG")
    store_image(str(path), tmp_path)  # accepted: large frames are fine
    sent = cloud_image(str(path), 768)
    assert (sent.width, sent.height) == (768, 768) and sent.url.startswith("data:image/jpeg")
    assert sent.sent_bytes < path.stat().st_size


def test_transparency_survives_as_png(tmp_path: Path) -> None:
    path = tmp_path / "icon.png"
    path.write_bytes(_png((1000, 500), "RGBA"))
    sent = cloud_image(str(path), 768)
    assert sent.url.startswith("data:image/png") and (sent.width, sent.height) == (768, 384)


def test_a_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path, format="PNG")
    with pytest.raises(TmoGraphError, match="more pixels than this accepts"):
        store_image(str(path), tmp_path)


def test_a_file_removed_mid_dialogue_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError, match="is gone"):
        cloud_image(str(tmp_path / "gone.png"), 768)
    with pytest.raises(TmoGraphError, match="max_side"):
        cloud_image("https://example.com/x.png", 0)
