#!/usr/bin/python3
"""The real-photo fixture generator (tests/fixtures/make_photo_fixtures.py) is deterministic
and makes what it says.

1. Two runs give the same tree byte for byte (files, symlinks, permissions), for the image
   folder and the bad inputs.
2. list.csv lists, per split, exactly what torchvision's make_dataset finds (same order and
   labels) once hidden entries are left out; fixture_index.json's classes and counts agree.
3. Every listed image decodes with PIL; sizes run from 1x1 to 1000 px; JPEG qualities and
   chroma subsamplings vary; each flavour named in the index has the property it claims
   (checked with PIL and by reading the bytes); the skip counts in the index match a recount.
4. The bad inputs are what cases.json says (PIL fails on each; SOF claims 60000x60000; loop).
5. --size medium: about 2,000 images, every side <= 500 px.

Run by ctest with Debian's /usr/bin/python3 (PIL, numpy, torchvision, skimage photos).
"""
import csv
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, JpegImagePlugin, UnidentifiedImageError
from torchvision.datasets.folder import find_classes, make_dataset

SOURCE_DIR = Path(os.environ.get("IMGSTORE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
GENERATOR = SOURCE_DIR / "tests" / "fixtures" / "make_photo_fixtures.py"
EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png")


def generate(*args):
    result = subprocess.run([sys.executable, str(GENERATOR), *map(str, args)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise AssertionError(f"make_photo_fixtures.py {args} exited with {result.returncode}")


def tree_digest(root):
    """{relative path: (kind, mode bits, content digest or link target)} of a whole tree."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in dirs + sorted(files):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                mode = stat.S_IMODE(st.st_mode)
                if mode == 0 and os.geteuid() != 0:
                    content = f"unreadable, {st.st_size} bytes"
                else:
                    content = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", mode, content)
    return out


def hidden(rel):
    return any(part.startswith(".") for part in Path(rel).parts)


def read_list(root):
    with open(root / "list.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label", "split", "class"], rows[0]
    return rows[1:]


def check_list_matches_torchvision(root, index):
    rows = read_list(root)
    classes = index["classes"]
    assert classes == sorted(classes, key=lambda c: c.encode())
    for split in ("train", "val"):
        split_dir = root / split
        tv_classes, _ = find_classes(str(split_dir))
        # torchvision takes hidden folders as classes; the fixture has one to show it.
        if split == "train":
            assert ".ipynb_checkpoints" in tv_classes, tv_classes
        visible = [c for c in tv_classes if not c.startswith(".")]
        assert visible == classes, (visible, classes)
        samples = make_dataset(
            str(split_dir), {c: i for i, c in enumerate(classes)},
            is_valid_file=lambda p: (not hidden(os.path.relpath(p, split_dir))
                                     and p.lower().endswith(EXTENSIONS)))
        expected = [(os.path.relpath(p, root), label) for p, label in samples]
        got = [(path, int(label)) for path, label, s, _ in rows if s == split]
        assert got == expected, f"{split}: list.csv differs from torchvision's order"
        for path, label, s, cls in rows:
            assert classes[int(label)] == cls
        counts = {c: sum(1 for _, label in expected if classes[label] == c) for c in classes}
        assert counts == index["counts"][split], (counts, index["counts"][split])
    return rows


def jpeg_quality_signature(im):
    return tuple(tuple(t) for t in im.quantization.values())


def check_images(root, rows, index, max_side):
    sides, qualities, samplings = set(), set(), set()
    for path, *_ in rows:
        with Image.open(root / path) as im:
            im.load()  # decodes whole: no truncated or corrupt file among the good ones
            sides.add(max(im.size))
            assert min(im.size) >= 1
            if im.format == "JPEG":
                qualities.add(jpeg_quality_signature(im))
                if im.mode == "RGB":
                    samplings.add(JpegImagePlugin.get_sampling(im))
    assert min(sides) == 1 and max(sides) == max_side, (min(sides), max(sides))
    assert len(sides) >= 8, sorted(sides)
    assert len(qualities) >= 5, len(qualities)
    assert samplings >= {0, 1, 2}, samplings  # 4:4:4, 4:2:2, 4:2:0

    def png_header(path):
        data = (root / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        width, height, depth, color_type, _, _, interlace = \
            struct.unpack(">IIBBBBB", data[16:29])
        return depth, color_type, interlace, b"tRNS" in data[:data.find(b"IDAT")]

    def exif_orientation(im):
        return im.getexif().get(0x0112)

    checks = {
        "gray_jpeg": lambda im, p: im.format == "JPEG" and im.mode == "L",
        "cmyk_jpeg": lambda im, p: im.format == "JPEG" and im.mode == "CMYK",
        "progressive_jpeg": lambda im, p: im.format == "JPEG" and im.info.get("progressive"),
        "exif_orientation_6": lambda im, p: im.format == "JPEG" and exif_orientation(im) == 6,
        "jpeg_q5": lambda im, p: im.format == "JPEG" and im.quantization[0][0] > 100,
        "jpeg_q100_444": lambda im, p: (im.format == "JPEG" and set(im.quantization[0]) == {1}
                                        and JpegImagePlugin.get_sampling(im) == 0),
        "png_named_JPEG": lambda im, p: im.format == "PNG" and p.endswith(".JPEG"),
        "uppercase_JPG": lambda im, p: im.format == "JPEG" and p.endswith(".JPG"),
        "uppercase_PNG": lambda im, p: im.format == "PNG" and p.endswith(".PNG"),
        "palette_trns_png": lambda im, p: (im.mode == "P" and "transparency" in im.info
                                           and png_header(p)[:2] == (4, 3)),
        "bilevel_png": lambda im, p: im.mode == "1" and png_header(p)[:2] == (1, 0),
        "gray16_png": lambda im, p: png_header(p)[:3] == (16, 0, 0),
        "rgb16_png": lambda im, p: png_header(p)[:3] == (16, 2, 0) and im.mode == "RGB",
        "rgba16_png": lambda im, p: png_header(p)[:3] == (16, 6, 0) and im.mode == "RGBA",
        "rgba_png": lambda im, p: png_header(p)[:2] == (8, 6) and im.mode == "RGBA",
        "gray_alpha_png": lambda im, p: png_header(p)[:2] == (8, 4) and im.mode == "LA",
        "adam7_rgb_png": lambda im, p: png_header(p)[:3] == (8, 2, 1),
        "adam7_gray16_png": lambda im, p: png_header(p)[:3] == (16, 0, 1),
        "adam7_palette_png": lambda im, p: png_header(p) == (8, 3, 1, True),
        "one_by_one_jpeg": lambda im, p: im.format == "JPEG" and im.size == (1, 1),
        "one_by_one_png": lambda im, p: im.format == "PNG" and im.size == (1, 1),
        "strip_1x400_jpeg": lambda im, p: im.format == "JPEG" and im.size == (1, 400),
        "strip_300x1_png": lambda im, p: im.format == "PNG" and im.size == (300, 1),
        "utf8_name": lambda im, p: any(ord(c) > 0x3000 for c in p) and " " in Path(p).name,
        "space_name": lambda im, p: " " in Path(p).name and "é" in p,
        "csv_quoting_name": lambda im, p: "," in p and '"' in p,
        "nested_folder": lambda im, p: len(Path(p).parts) == 4,
        "large_1000": lambda im, p: max(im.size) == 1000,
    }
    flavours = index["flavours"]
    expected = set(checks) - ({"large_1000"} if max_side < 1000 else set())
    assert set(flavours) == expected, set(flavours) ^ expected
    listed = {path for path, *_ in rows}
    for name, path in flavours.items():
        assert path in listed, f"flavour {name}: {path} is not in list.csv"
        with Image.open(root / path) as im:
            im.load()
            assert checks[name](im, path), f"flavour {name}: {path} is not what it claims"


def recount_skipped(root):
    """Skip counts by imgstore's rules: hidden entries (a hidden folder once), files outside a
    class folder, unsupported image formats, other files."""
    counts = {"hidden": 0, "other": 0, "unsupported_image": 0, "outside_class": 0}
    for dirpath, dirs, files in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)  # 0: root, 1: split folder
        for d in [d for d in dirs if d.startswith(".")]:
            counts["hidden"] += 1
            dirs.remove(d)
        for name in files:
            if name.startswith("."):
                counts["hidden"] += 1
            elif depth < 2:
                counts["outside_class"] += 1
            elif name.lower().endswith(EXTENSIONS):
                pass
            elif name.lower().endswith((".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")):
                counts["unsupported_image"] += 1
            else:
                counts["other"] += 1
    return counts


def check_bad(bad):
    cases = {c["name"]: c for c in json.loads((bad / "cases.json").read_text())}
    assert set(cases) == {"truncated_jpeg", "zero_bytes", "text_named_jpg", "huge_sof",
                          "unreadable", "dangling_symlink", "empty_class", "symlink_loop",
                          "list_missing_file", "list_bad_label", "mixed"}, set(cases)
    for c in cases.values():
        assert os.path.lexists(bad / c["bad_path"]), c
        assert os.path.lexists(bad / c["source"]), c

    def fails_in_pil(path, error):
        try:
            with Image.open(path) as im:
                im.load()
        except error:
            return True
        return False

    assert fails_in_pil(bad / cases["truncated_jpeg"]["bad_path"], OSError)
    for name in ("zero_bytes", "text_named_jpg"):
        assert fails_in_pil(bad / cases[name]["bad_path"], UnidentifiedImageError)
    huge = (bad / cases["huge_sof"]["bad_path"]).read_bytes()
    sof = huge.index(b"\xff\xc0")
    assert huge[sof + 5:sof + 9] == bytes.fromhex("ea60ea60")  # 60000 x 60000
    assert fails_in_pil(bad / cases["huge_sof"]["bad_path"], Image.DecompressionBombError)
    unreadable = bad / cases["unreadable"]["bad_path"]
    assert stat.S_IMODE(unreadable.stat().st_mode) == 0
    dangling = bad / cases["dangling_symlink"]["bad_path"]
    assert dangling.is_symlink() and not dangling.exists()
    empty = bad / cases["empty_class"]["bad_path"]
    assert empty.is_dir() and not any(p.suffix.lower() in EXTENSIONS for p in empty.iterdir())
    loop = bad / cases["symlink_loop"]["bad_path"]
    assert loop.is_symlink() and loop.resolve() == loop.parent.parent.resolve()
    with open(bad / cases["list_missing_file"]["source"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label"]
    assert any(not (bad / "list_missing_file" / r[0]).exists() for r in rows[1:])
    with open(bad / cases["list_bad_label"]["source"], newline="") as f:
        rows = list(csv.reader(f))
    assert any(not r[1].isdigit() for r in rows[1:]) and all(
        (bad / "list_bad_label" / r[0]).exists() for r in rows[1:])
    mixed = bad / "mixed"
    for rel in ("broken/truncated.jpg", "broken/zero bytes.jpg", "broken/text.jpg",
                "broken/huge.jpg", "broken/unreadable.jpg", "broken/dangling.jpg", "empty",
                "loop/sub/up", "ok/ok.jpg"):
        assert os.path.lexists(mixed / rel), rel


def main():
    with tempfile.TemporaryDirectory(prefix="imgstore-photo-fixtures-") as tmp:
        tmp = Path(tmp)
        generate("--out", tmp / "a", "--bad", tmp / "bad_a")
        generate("--out", tmp / "b", "--bad", tmp / "bad_b")
        digest_a, digest_b = tree_digest(tmp / "a"), tree_digest(tmp / "b")
        assert digest_a == digest_b, sorted(set(digest_a.items()) ^ set(digest_b.items()))[:5]
        assert tree_digest(tmp / "bad_a") == tree_digest(tmp / "bad_b")
        # Rerunning over an existing fixture replaces it with the same bytes.
        generate("--out", tmp / "a")
        assert tree_digest(tmp / "a") == digest_a

        root = tmp / "a"
        index = json.loads((root / "fixture_index.json").read_text(encoding="utf-8"))
        rows = check_list_matches_torchvision(root, index)
        assert 150 <= len(rows) <= 250, len(rows)
        for split, minimum in (("train", 20), ("val", 5)):
            assert all(n >= minimum for n in index["counts"][split].values()), index["counts"]
        check_images(root, rows, index, max_side=1000)
        assert recount_skipped(root) == index["skipped"], (recount_skipped(root), index["skipped"])
        check_bad(tmp / "bad_a")

        # A folder that is not a fixture is never replaced.
        (tmp / "mine").mkdir()
        (tmp / "mine" / "keep.txt").write_text("mine")
        result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp / "mine")],
                                capture_output=True, text=True)
        assert result.returncode != 0 and "not a fixture folder" in result.stderr
        assert (tmp / "mine" / "keep.txt").read_text() == "mine"

        generate("--out", tmp / "medium", "--size", "medium")
        medium = tmp / "medium"
        rows = read_list(medium)
        assert 1900 <= len(rows) <= 2300, len(rows)
        for path, *_ in rows:
            with Image.open(medium / path) as im:  # header only
                assert max(im.size) <= 500, (path, im.size)
    print("photo fixtures: deterministic, listed as torchvision walks, flavours and bad inputs ok")


if __name__ == "__main__":
    main()
