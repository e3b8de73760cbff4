#!/usr/bin/env python3
"""src/codecs/ against Pillow 9.4 on real photos (python3-skimage's data) and on variants
Pillow writes at test time: every PNG colour type / bit depth / tRNS / interlace, gray, CMYK
and progressive JPEGs, 1x1 images. Decoding and the resampler must be bit-exact; bad input
must fail with a message naming the file."""
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

TOOL = os.environ.get("IMGSTORE_CODEC_TOOL") or os.path.join(
    os.environ.get("IMGSTORE_BUILD_DIR", "build"), "tests", "imgstore-codec-tool")
SKIMAGE = "/usr/lib/python3/dist-packages/skimage/data"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
          "retina.jpg", "motorcycle_left.png", "camera.png", "palette_color.png",
          "green_palette.png", "foo3x5x4indexed.png", "palette_gray.png", "logo.png"]
failures = []


def tool(*args):
    return subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def decode(path, channels, tmp):
    out = os.path.join(tmp, "out.raw")
    r = tool("decode", path, channels, out)
    if r.returncode != 0:
        return None, r.stderr
    h, w, c = map(int, r.stdout.split())
    return np.fromfile(out, np.uint8).reshape(h, w, c), ""


def compare_decode(path, tmp, label):
    for channels, mode in ((3, "RGB"), (1, "L")):
        ref = np.asarray(Image.open(path).convert(mode)).reshape(
            Image.open(path).size[1], Image.open(path).size[0], channels)
        got, err = decode(path, channels, tmp)
        if got is None:
            check(False, f"{label} {mode}: decode failed: {err}")
            continue
        check(got.shape == ref.shape, f"{label} {mode}: shape {got.shape} vs {ref.shape}")
        if got.shape == ref.shape:
            diff = int(np.abs(got.astype(int) - ref).max())
            check(diff == 0, f"{label} {mode}: max abs diff {diff} against Pillow")


def make_variants(tmp):
    """(path, label) of images Pillow writes: each PNG kind, and JPEG flavours."""
    rng = np.random.default_rng(7)
    photo = Image.open(os.path.join(SKIMAGE, "chelsea.png")).convert("RGB").crop((0, 0, 97, 61))
    out = []

    def save(im, name, **kw):
        p = os.path.join(tmp, name)
        im.save(p, **kw)
        out.append((p, name))

    gray = photo.convert("L")
    save(gray, "gray8.png")
    save(photo, "rgb8.png")
    save(photo.convert("RGBA"), "rgba8.png")
    save(gray.convert("LA"), "la8.png")
    save(gray.convert("1"), "gray1.png")
    g16 = (np.asarray(gray, np.uint16) * 3).astype(np.uint16)  # some values over 255
    save(Image.fromarray(g16.astype(np.int32), "I"), "gray16.png")
    pal = photo.convert("P", palette=Image.ADAPTIVE, colors=200)
    save(pal, "palette8.png")
    pal_t = pal.copy()
    pal_t.info["transparency"] = bytes(range(0, 200, 2))
    save(pal_t, "palette8_trns.png", transparency=bytes(range(0, 200, 2)))
    save(photo.convert("P", palette=Image.ADAPTIVE, colors=4), "palette2.png", bits=2)
    save(photo.convert("P", palette=Image.ADAPTIVE, colors=16), "palette4.png", bits=4)
    save(gray, "gray8_trns.png", transparency=17)
    save(photo, "rgb8_trns.png", transparency=(1, 2, 3))
    save(Image.new("RGB", (1, 1), (200, 10, 30)), "one_by_one.png")
    save(photo, "rgb.jpg", quality=90)
    save(photo, "rgb444.jpg", quality=90, subsampling=0)
    save(photo, "progressive.jpg", quality=85, progressive=True)
    save(gray, "gray.jpg", quality=90)
    save(photo.convert("CMYK"), "cmyk.jpg", quality=90)
    save(Image.new("RGB", (1, 1), (200, 10, 30)), "one_by_one.jpg")
    # 16-bit RGB / RGBA / LA, palette with indices past PLTE, Adam7: written by numpy + zlib
    # (Pillow cannot write them).
    out += write_raw_pngs(tmp, rng)
    return out


def png_chunk(kind, data):
    import zlib
    import struct
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(path, width, height, depth, color_type, rows, plte=None, interlace=0):
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    body = b"".join(rows)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    if plte is not None:
        data += png_chunk(b"PLTE", plte)
    data += png_chunk(b"IDAT", zlib.compress(body)) + png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def adam7_rows(pixels, bpp):
    """Filter-type-0 scanlines of the 7 Adam7 passes of an HxWxbpp byte array."""
    rows = []
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                           (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = pixels[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            rows += [b"\0" + r.tobytes() for r in sub]
    return rows


def write_raw_pngs(tmp, rng):
    out = []
    h, w = 13, 11
    for name, ctype, ch in (("rgb16.png", 2, 3), ("rgba16.png", 6, 4), ("la16.png", 4, 2)):
        px = rng.integers(0, 65536, (h, w, ch), dtype=np.uint16).astype(">u2")
        p = os.path.join(tmp, name)
        raw_png(p, w, h, 16, ctype, [b"\0" + r.tobytes() for r in px])
        out.append((p, name))
    # Palette of 5 entries, indices up to 255: Pillow reads a grey ramp past the PLTE.
    idx = rng.integers(0, 256, (h, w), dtype=np.uint8)
    p = os.path.join(tmp, "palette_short.png")
    raw_png(p, w, h, 8, 3, [b"\0" + r.tobytes() for r in idx], plte=bytes(range(100, 115)))
    out.append((p, "palette_short.png"))
    for name, ctype, ch in (("rgb8_adam7.png", 2, 3), ("gray8_adam7.png", 0, 1)):
        px = rng.integers(0, 256, (h, w, ch), dtype=np.uint8)
        p = os.path.join(tmp, name)
        raw_png(p, w, h, 8, ctype, adam7_rows(px, ch), interlace=1)
        out.append((p, name))
    px = rng.integers(0, 65536, (h, w, 1), dtype=np.uint16).astype(">u2")
    p = os.path.join(tmp, "gray16_adam7.png")
    raw_png(p, w, h, 16, 0, adam7_rows(px, 2), interlace=1)
    out.append((p, "gray16_adam7.png"))
    return out


def test_resize(tmp):
    src_path = os.path.join(tmp, "src.raw")
    dst_path = os.path.join(tmp, "dst.raw")
    rng = np.random.default_rng(3)
    for name in ("chelsea.png", "rocket.jpg", "camera.png"):
        for mode in ("RGB", "L"):
            im = Image.open(os.path.join(SKIMAGE, name)).convert(mode)
            arr = np.asarray(im)
            c = 1 if mode == "L" else 3
            arr.tofile(src_path)
            W, H = im.size
            cases = [((0, 0, W, H), (224, 224)), ((0, 0, W, H), (W * 2, H + 3)),
                     ((10.5, 3.25, W - 7.75, H - 0.5), (97, 61)), ((0, 0, W, H), (1, 1))]
            for _ in range(6):
                x0, y0 = rng.uniform(0, W / 2), rng.uniform(0, H / 2)
                cases.append(((x0, y0, rng.uniform(x0 + 1, W), rng.uniform(y0 + 1, H)),
                              (int(rng.integers(1, 300)), int(rng.integers(1, 300)))))
            for box, size in cases:
                for filt, pil_filt in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
                    ref = np.asarray(im.resize(size, pil_filt, box=box))
                    r = tool("resize", src_path, H, W, c, *map(repr, map(float, box)), *size,
                             filt, dst_path)
                    if r.returncode != 0:
                        check(False, f"resize {name} {mode} {box} {size}: {r.stderr}")
                        continue
                    got = np.fromfile(dst_path, np.uint8).reshape(ref.shape)
                    diff = int(np.abs(got.astype(int) - ref).max())
                    check(diff == 0, f"resize {name} {mode} {filt} box={box} size={size}: "
                                     f"max abs diff {diff}")


def test_jpeg_crop(tmp):
    path = os.path.join(SKIMAGE, "rocket.jpg")
    out = os.path.join(tmp, "crop.raw")
    im = Image.open(path)
    W, H = im.size
    # Scale 1: exactly Pillow's crop of the full decode.
    r = tool("crop", path, 100, 50, 300, 200, 224, 224, 3, out)
    check(r.returncode == 0, f"crop: {r.stderr}")
    h, w, c, denom, *box = r.stdout.split()
    check(denom == "1", f"crop 300x200 -> 224: scale 1/{denom}, expected 1/1")
    got = np.fromfile(out, np.uint8).reshape(int(h), int(w), 3)
    ref = np.asarray(im.convert("RGB").crop((100, 50, 400, 250)))
    check(np.array_equal(got, ref), "crop at scale 1 differs from Pillow's crop")
    # Scale 1/2: Pillow's draft() uses the same libjpeg DCT scaling.
    r = tool("crop", path, 0, 0, W, H, 300, 200, 3, out)
    h, w, c, denom, *box = r.stdout.split()
    check(denom == "2", f"640x427 -> 300x200 picks 1/{denom}, expected 1/2")
    got = np.fromfile(out, np.uint8).reshape(int(h), int(w), 3)
    d = Image.open(path)
    d.draft("RGB", (W // 2, H // 2))
    ref = np.asarray(d.convert("RGB"))
    check(got.shape == ref.shape and np.array_equal(got, ref),
          f"1/2-scale decode {got.shape} differs from Pillow's draft {ref.shape}")


def test_encode(tmp):
    photo = Image.open(os.path.join(SKIMAGE, "chelsea.png")).convert("RGB")
    arr = np.asarray(photo)
    src = os.path.join(tmp, "enc.raw")
    arr.tofile(src)
    ours = os.path.join(tmp, "ours.jpg")
    r = tool("encode", src, arr.shape[0], arr.shape[1], 3, 90, ours)
    check(r.returncode == 0, f"encode: {r.stderr}")
    pil = os.path.join(tmp, "pil.jpg")
    photo.save(pil, quality=90)
    a = np.asarray(Image.open(ours).convert("RGB")).astype(float)
    b = np.asarray(Image.open(pil).convert("RGB")).astype(float)

    def psnr(x):
        return 10 * np.log10(255.0 ** 2 / np.mean((x - arr) ** 2))

    print(f"encode q90: PSNR ours {psnr(a):.2f} dB, Pillow's {psnr(b):.2f} dB; max abs diff "
          f"between the two {int(np.abs(a - b).max())}; sizes {os.path.getsize(ours)} vs "
          f"{os.path.getsize(pil)} bytes")
    check(Image.open(ours).size == photo.size, "encoded JPEG has the wrong size")
    check(psnr(a) > psnr(b) - 0.5, "our JPEG encoding is worse than Pillow's at the same quality")
    check(Image.open(ours).info.get("progressive") is None, "baseline expected")


def test_bad_input(tmp):
    def bad(name, data, expect, header_ok=False):
        p = os.path.join(tmp, name)
        with open(p, "wb") as f:
            f.write(data)
        cmds = [("decode", p, 3, os.path.join(tmp, "x.raw"))]
        if not header_ok:  # a truncated body still has a readable header
            cmds.append(("info", p))
        for cmd in cmds:
            r = tool(*cmd)
            check(r.returncode == 1 and p in r.stderr and expect in r.stderr,
                  f"{name} {cmd[0]}: exit {r.returncode}, stderr {r.stderr!r} "
                  f"(expected '{expect}')")

    truncated = open(os.path.join(SKIMAGE, "truncated.jpg"), "rb").read()
    bad("truncated.jpg", truncated, "corrupt JPEG")
    rocket = open(os.path.join(SKIMAGE, "rocket.jpg"), "rb").read()
    r = tool("decode", os.path.join(tmp, "cut.jpg"), 3, os.path.join(tmp, "x.raw"))
    p = os.path.join(tmp, "cut.jpg")
    with open(p, "wb") as f:
        f.write(rocket[: len(rocket) * 2 // 3])
    r = tool("decode", p, 3, os.path.join(tmp, "x.raw"))
    check(r.returncode == 1 and "corrupt JPEG" in r.stderr, f"cut JPEG: {r.stderr!r}")
    bad("empty.jpg", b"", "empty file")
    bad("text.jpg", b"hello, world\n", "not a JPEG or PNG")
    # A baseline SOF0 claiming 60000x60000 (3.6e9 pixels).
    sof = bytes([0xFF, 0xC0, 0, 17, 8, 0xEA, 0x60, 0xEA, 0x60, 3,
                 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    dqt = bytes([0xFF, 0xDB, 0, 67, 0]) + bytes([1] * 64)
    sos = bytes([0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0])
    bad("bomb.jpg", b"\xFF\xD8" + dqt + sof + sos + b"\xFF\xD9", "60000x60000")
    png = open(os.path.join(SKIMAGE, "astronaut.png"), "rb").read()
    bad("cut.png", png[: len(png) // 2], "corrupt PNG", header_ok=True)
    bad("bomb.png", png[:16] + (60000).to_bytes(4, "big") * 2 + png[24:4096], "60000x60000")
    # A PNG named .jpg is decoded as PNG.
    p = os.path.join(tmp, "really_png.jpg")
    with open(p, "wb") as f:
        f.write(png)
    r = tool("info", p)
    check(r.returncode == 0 and "kind=PNG" in r.stdout, f"PNG named .jpg: {r.stdout}{r.stderr}")


def main():
    if not os.path.exists(TOOL):
        sys.exit(f"imgstore-codec-tool not built at {TOOL}")
    if not os.path.isdir(SKIMAGE):
        sys.exit(f"python3-skimage's data missing ({SKIMAGE}): apt-get install python3-skimage")
    with tempfile.TemporaryDirectory() as tmp:
        for name in PHOTOS:
            compare_decode(os.path.join(SKIMAGE, name), tmp, name)
        for path, label in make_variants(tmp):
            compare_decode(path, tmp, label)
        test_resize(tmp)
        test_jpeg_crop(tmp)
        test_encode(tmp)
        test_bad_input(tmp)
    if failures:
        sys.exit(f"{len(failures)} failures")
    print("all codec comparisons with Pillow passed")


if __name__ == "__main__":
    main()
