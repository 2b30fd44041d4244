"""Draws the demo's small camera views (committed; rerun to regenerate them)."""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent / "images"


def first_person() -> Image.Image:
    img = Image.new("RGB", (96, 96), "#d9c7a3")  # wooden cutting board
    draw = ImageDraw.Draw(img)
    for x, y in ((20, 30), (45, 55), (65, 25)):
        draw.ellipse((x, y, x + 18, y + 18), fill="#d62d20")  # tomatoes
    draw.rectangle((10, 75, 85, 80), fill="#9e9e9e")  # knife blade
    return img


def overhead() -> Image.Image:
    img = Image.new("RGB", (96, 96), "#303030")  # stove top
    draw = ImageDraw.Draw(img)
    draw.ellipse((18, 18, 78, 78), fill="#7a7a7a")  # pot
    draw.ellipse((26, 26, 70, 70), fill="#f2e8c9")  # pasta water
    return img


def side() -> Image.Image:
    img = Image.new("RGB", (96, 96), "#eaeaea")  # fridge door
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 8, 88, 88), outline="#8a8a8a", width=3)
    draw.rectangle((78, 30, 82, 60), fill="#8a8a8a")  # handle
    return img


def banana() -> Image.Image:
    img = Image.new("RGB", (96, 96), "white")
    draw = ImageDraw.Draw(img)
    draw.arc((10, 10, 90, 90), start=20, end=160, fill="#f4d03f", width=14)
    return img


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name, make in {
        "first_person": first_person,
        "overhead": overhead,
        "side": side,
        "banana": banana,
    }.items():
        make().save(HERE / f"{name}.png", optimize=True)
        print(HERE / f"{name}.png")
