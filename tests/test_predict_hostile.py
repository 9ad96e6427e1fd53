"""`harness predict` on hostile files (issue 24), through the real command on the session's quickstart
model (LeNet on digits, grayscale 28x28): a 144 MP PNG of 140 KB (refused in one line from its
header, without decoding its pixels or a raw Pillow warning), a 108 MP JPEG photo (decoded at
1/8 scale and classified), and symlink loops named directly or met in a folder. Nothing is
trained here."""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest
from conftest import harness
from helpers import python, quickstart_run_ids
from PIL import Image
from test_predict import _digit_image, _parse_csv

LIMIT_LINE = "12000x12000 pixels (144 MP) is over the 89 MP decoding limit; resize it first"


def _blank_png(path: Path, width: int, height: int) -> None:
    """A black RGB PNG written a row at a time, so a 12000x12000 one (432 MB of pixels, about
    420 KB on disk) is made without holding it in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + 3 * width)  # filter byte 0, then RGB
    packer = zlib.compressobj(9)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for _ in range(height):
            if data := packer.compress(row):
                out.write(chunk(b"IDAT", data))
        out.write(chunk(b"IDAT", packer.flush()) + chunk(b"IEND", b""))


def _big_jpeg(path: Path) -> None:
    """A 12000x9000 RGB JPEG (108 MP, a 100 MP camera's size): a smooth gradient, about 1 MB."""
    gradient = Image.linear_gradient("L").resize((12000, 9000), Image.BILINEAR)
    Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)).save(path, quality=85)


# Runs `harness predict` twice in one fresh process, as the command does (`harness.cli.main`), with
# no pytest capturing its warnings. The first call loads everything (imports, the model); the
# process's peak memory is then reset (Linux: /proc/self/clear_refs), so the peak during the
# second call less the memory in use before it is what that call's decoding took. ru_maxrss
# cannot say it: it never resets, and the first call's peak is already above a big decode's.
_CHILD = """
import json, sys
from harness.cli import main

def predict(*args):
    sys.argv = ["harness", "predict", *args]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))  # kB

store, uri, first, second, report = sys.argv[1:]
# --tracking-uri each time: Tracker.model_info leaves MLFLOW_TRACKING_URI unset after the first call
# (MLflow's _use_tracking_uri restores an unset URI by deleting the variable).
codes = [predict(uri, first, "--format", "csv", "--tracking-uri", store)]
for stream in (sys.stdout, sys.stderr):
    print("--- second", file=stream, flush=True)
try:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from what is in use now
    before = status("VmRSS")
except OSError:  # not Linux, or not allowed: the memory is not measured
    before = None
codes.append(predict(uri, second, "--format", "csv", "--tracking-uri", store))
grew = None if before is None else status("VmHWM") - before
with open(report, "w") as out:
    json.dump({"codes": codes, "grew": grew}, out)
"""


def _predict_twice_in_a_child(cwd: Path, uri: str, first: Path, second: Path) -> tuple[int, str, str, int | None]:
    """`harness predict URI FIRST`, then `... SECOND` (csv), in a fresh process: the second one's
    (exit code, stdout, stderr, bytes of peak resident memory it took above what was in use
    before it; None where that cannot be measured)."""
    report = cwd / "child.json"
    args = [os.environ["MLFLOW_TRACKING_URI"], uri, str(first), str(second), str(report)]
    done = python("-c", _CHILD, *args, cwd=cwd, env={"COLUMNS": "200"}, timeout=600)
    assert done.returncode == 0 and report.exists(), done.stderr
    result = json.loads(report.read_text())
    assert result["codes"][0] == 0, done.stderr
    out, err = (text.split("--- second\n", 1)[1] for text in (done.stdout, done.stderr))
    return result["codes"][1], out, err, result["grew"]


def test_a_huge_png_is_one_line_without_decoding_it_and_a_huge_jpeg_is_classified(
        quickstart_store: Path, tmp_path: Path) -> None:
    _, child = quickstart_run_ids()
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    _digit_image(3).save(small / "digit.png")
    _digit_image(3).save(big / "digit.png")
    _blank_png(big / "huge.png", 12000, 12000)
    _big_jpeg(big / "photo.jpg")
    assert (big / "huge.png").stat().st_size < 1_000_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(big / "huge.png") as img:  # what predict printed
        assert img.size == (12000, 12000) and img.mode == "RGB"

    code, out, err, grew = _predict_twice_in_a_child(tmp_path, f"runs:/{child}/model", small, big)
    assert code == 0, err
    assert sorted(r["path"] for r in _parse_csv(out)) == [str(big / "digit.png"), str(big / "photo.jpg")]
    assert "DecompressionBomb" not in err and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert f"unreadable: {big / 'huge.png'}: {LIMIT_LINE}" in lines, err
    assert sum("huge.png" in line for line in lines) == 1 and not any("photo.jpg" in line for line in lines), err
    assert "1 of 3 files could not be read" in err, err
    # Decoded in full, the PNG would take 432 MB (RGB) + 144 MB (converted to grayscale) and the
    # JPEG 324 MB + 108 MB; read from its header, and at 1/8 scale, they take a few.
    if sys.platform == "linux":
        assert grew is not None and grew < 300 * 2**20, grew


def test_decode_reduces_a_huge_jpeg_and_refuses_a_huge_png_from_its_header(tmp_path: Path) -> None:
    from harness.prediction import MAX_DECODE_PIXELS, TooLarge, decode

    _blank_png(tmp_path / "huge.png", 12000, 12000)
    _big_jpeg(tmp_path / "photo.jpg")
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(TooLarge, match="^12000x12000 pixels \\(144 MP\\) is over the 89 MP decoding limit"):
        decode(tmp_path / "huge.png", 3, 224)
    for channels, size in ((1, 28), (3, 224)):
        assert decode(tmp_path / "photo.jpg", channels, size).shape == (channels, size, size)
    with pytest.raises(TooLarge, match="^12000x9000 pixels \\(108 MP\\) is over"):  # too big to reduce for it
        decode(tmp_path / "photo.jpg", 1, 9000)
    assert Image.MAX_IMAGE_PIXELS == limit == MAX_DECODE_PIXELS  # Pillow's own check is back on


def test_a_symlink_loop_named_directly_is_said_to_be_one(quickstart_store: Path, tmp_path: Path, capsys) -> None:
    _, child = quickstart_run_ids()
    uri = f"runs:/{child}/model"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # ln -s loop loop
    image = tmp_path / "digit.png"
    _digit_image(5).save(image)

    code, out, err = harness(capsys, "predict", uri, str(loop), str(image), "--format", "csv")
    assert code == 0, err
    assert [r["path"] for r in _parse_csv(out)] == [str(image)]
    assert f"unreadable: {loop}: symlink loop (it points at itself or a cycle)" in err.splitlines(), err
    assert "no such file" not in err and "Traceback" not in err, err

    code, out, err = harness(capsys, "predict", uri, str(loop))  # nothing readable: one line, exit code 2
    assert code == 2 and out == "" and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Nothing to read"), err
    assert f"{loop}: symlink loop" in lines[0] and "no such file" not in lines[0], err


def test_links_that_lead_nowhere_in_a_folder_are_listed_and_cycles_do_not_recurse(
        quickstart_store: Path, tmp_path: Path, capsys) -> None:
    _, child = quickstart_run_ids()
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    _digit_image(1).save(folder / "sub" / "digit.png")
    (folder / "loop").symlink_to("loop")  # no image suffix: it may have stood for a folder of images
    (folder / "sub" / "a.png").symlink_to("b.png")
    (folder / "sub" / "b.png").symlink_to("a.png")  # a two-link cycle
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "sub" / "up").symlink_to("..")  # a folder cycle: not followed, so searched once
    (folder / "linked.png").symlink_to(folder / "sub" / "digit.png")  # a link to an image is one

    code, out, err = harness(capsys, "predict", f"runs:/{child}/model", str(folder), "--format", "csv")
    assert code == 0, err
    assert sorted(r["path"] for r in _parse_csv(out)) == [str(folder / "linked.png"), str(folder / "sub" / "digit.png")]
    lines = err.strip().splitlines()
    loop = "symlink loop (it points at itself or a cycle)"
    for path in (folder / "loop", folder / "sub" / "a.png", folder / "sub" / "b.png"):
        assert f"unreadable: {path}: {loop}" in lines, err
    assert f"unreadable: {folder / 'gone.jpg'}: broken symlink (its target {tmp_path / 'deleted.jpg'} does not exist)" \
        in lines, err
    assert "4 of 6 files could not be read" in err and "Traceback" not in err, err


def test_find_images_reports_each_broken_path_once(tmp_path: Path) -> None:
    from harness.prediction import find_images, no_images_message

    (tmp_path / "loop").symlink_to("loop")
    paths = [tmp_path, tmp_path / "loop", tmp_path / "nope", tmp_path / "nope"]
    files, missing = find_images(paths)
    assert files == []
    assert [(m.path, m.reason.split(" (")[0]) for m in missing] == [
        (str(tmp_path / "loop"), "symlink loop"), (str(tmp_path / "nope"), "no such file or folder")]
    message = no_images_message(paths, missing)
    assert f"found in {tmp_path} ({tmp_path / 'loop'}: symlink loop" in message
    assert f"; {tmp_path / 'nope'}: no such file or folder)" in message
