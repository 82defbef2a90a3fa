"""Unit tests of the pure logic in mobidem.vision.blazeface and mobidem.vision.align (no models)."""
import numpy as np
import pytest

from mobidem.vision import align, blazeface as bf


# ------------------------------------------------------------------------------------------- anchors
def test_anchor_counts():
    assert bf.SHORT_RANGE.num_anchors == 896
    assert bf.FULL_RANGE.num_anchors == 2304
    assert bf.SHORT_RANGE.input_size == 128 and bf.FULL_RANGE.input_size == 192
    assert set(bf.SPECS) == {"blazeface_short", "blazeface_full"}


def test_anchor_positions_short():
    a = bf.SHORT_RANGE.anchors
    # first layer: 16x16 cells, 2 anchors each, row-major
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[1], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[32], [0.5 / 16, 1.5 / 16])  # next row
    np.testing.assert_allclose(a[511], [15.5 / 16, 15.5 / 16])
    # second layer: 8x8 cells, 6 anchors each
    np.testing.assert_allclose(a[512:518], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))
    np.testing.assert_allclose(a[518], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_anchor_positions_full():
    a = bf.FULL_RANGE.anchors
    np.testing.assert_allclose(a[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(a[1], [1.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(a[48], [0.5 / 48, 1.5 / 48])
    np.testing.assert_allclose(a[-1], [47.5 / 48, 47.5 / 48])


# ----------------------------------------------------------------------------------------- letterbox
@pytest.mark.parametrize("hw", [(360, 640), (640, 360), (250, 250), (1080, 1920), (50, 70)])
def test_letterbox_round_trip(hw):
    h, w = hw
    img = np.full((h, w, 3), 200, np.uint8)
    out, lb = bf.letterbox(img, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    pts = np.array([[0, 0], [w, h], [w * 0.3, h * 0.7]], float)
    np.testing.assert_allclose(lb.to_original(lb.to_letterbox(pts)), pts, atol=1e-9)
    # the image corners land on the content's corners, centred
    tl, br = lb.to_letterbox([[0, 0], [w, h]])
    assert abs(tl[0] - (128 - br[0])) <= 1.0 and abs(tl[1] - (128 - br[1])) <= 1.0
    assert min(tl) >= 0 and max(br) <= 128 + 1e-6
    assert max(br[0] - tl[0], br[1] - tl[1]) == pytest.approx(128, abs=1.0)


def test_letterbox_content_position():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 255  # left half white
    out, lb = bf.letterbox(img, 128)
    assert lb.pad_x == 0 and lb.pad_y == 32
    assert out[:32].max() == 0 and out[96:].max() == 0  # black bars
    assert out[64, 10].min() > 250 and out[64, 120].max() < 5
    x = bf.to_input(out)
    assert x.shape == (1, 128, 128, 3) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


# -------------------------------------------------------------------------------------------- decode
def _synthetic(spec, faces):
    """faces: list of (anchor index, centre offset px, w, h, logit)."""
    reg = np.zeros((spec.num_anchors, 16), np.float32)
    logits = np.full((spec.num_anchors, 1), -20.0, np.float32)
    for idx, (dx, dy), w, h, lg in faces:
        reg[idx, :4] = [dx, dy, w, h]
        reg[idx, 4:] = np.tile([dx, dy], 6) + np.arange(12)  # keypoints around the centre
        logits[idx, 0] = lg
    return reg, logits


def test_decode_single_face_letterbox_pixels():
    spec = bf.SHORT_RANGE
    idx = 512 + 6 * (8 * 3 + 5)  # second layer, cell x=5, y=3
    reg, logits = _synthetic(spec, [(idx, (4.0, -2.0), 40.0, 50.0, 3.0)])
    dets = bf.decode(reg, logits, spec)
    assert len(dets) == 1
    d = dets[0]
    cx, cy = 5.5 / 8 * 128 + 4.0, 3.5 / 8 * 128 - 2.0
    np.testing.assert_allclose(d.box, [cx - 20, cy - 25, cx + 20, cy + 25], atol=1e-4)
    assert d.score == pytest.approx(1 / (1 + np.exp(-3.0)))
    np.testing.assert_allclose(d.keypoints[0], [cx, cy + 1], atol=1e-4)
    np.testing.assert_allclose(d.keypoints[5], [cx + 10, cy + 11], atol=1e-4)


def test_decode_maps_to_original_pixels():
    spec = bf.FULL_RANGE
    img = np.zeros((360, 640, 3), np.uint8)
    _, lb = bf.letterbox(img, spec.input_size)
    idx = 48 * 20 + 30
    reg, logits = _synthetic(spec, [(idx, (0.0, 0.0), 20.0, 20.0, 5.0)])
    (d,) = bf.decode(reg[None], logits[None], spec, lb)
    c_lb = np.array([30.5 / 48, 20.5 / 48]) * 192
    c = (c_lb - [lb.pad_x, lb.pad_y]) / lb.scale
    np.testing.assert_allclose((d.box[:2] + d.box[2:]) / 2, c, atol=1e-3)
    assert d.width == pytest.approx(20 / lb.scale, rel=1e-6)


def test_decode_threshold_and_shape_check():
    spec = bf.SHORT_RANGE
    reg, logits = _synthetic(spec, [(100, (0, 0), 10, 10, -0.5)])  # score < 0.5
    assert bf.decode(reg, logits, spec) == []
    assert len(bf.decode(reg, logits, spec, score_threshold=0.3)) == 1
    with pytest.raises(ValueError):
        bf.decode(reg[:10], logits[:10], spec)
    # huge logits do not overflow
    logits[:] = 1e4
    logits[1:] = -1e4
    assert len(bf.decode(reg, logits, spec)) == 1


def test_weighted_nms_merges_duplicates():
    spec = bf.SHORT_RANGE
    # two anchors of the same cell predicting nearly the same face, plus a distant face
    reg, logits = _synthetic(
        spec,
        [
            (0, (40.0, 40.0), 30.0, 30.0, 2.0),
            (1, (42.0, 40.0), 30.0, 30.0, 0.0),
            (511, (0.0, 0.0), 10.0, 10.0, 1.0),
        ],
    )
    dets = bf.decode(reg, logits, spec)
    assert len(dets) == 2
    s_hi, s_lo = 1 / (1 + np.exp(-2.0)), 0.5
    top = dets[0]
    assert top.score == pytest.approx(s_hi)  # merged detection keeps the top score
    a0 = 0.5 / 16 * 128
    cx = a0 + (40.0 * s_hi + 42.0 * s_lo) / (s_hi + s_lo)  # score-weighted centre
    assert (top.box[0] + top.box[2]) / 2 == pytest.approx(cx, abs=1e-4)
    assert top.keypoints[0, 0] == pytest.approx(cx, abs=1e-4)


def test_weighted_nms_keeps_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    scores = np.array([0.9, 0.8, 0.7])
    kps = np.zeros((3, 6, 2))
    out = bf.weighted_nms(boxes, scores, kps, 0.3)
    assert len(out) == 2
    assert [o[1] for o in out] == [0.9, 0.8]
    np.testing.assert_allclose(out[0][0], [0, 0, 10, (10 * 0.9 + 10.5 * 0.7) / 1.6])


# --------------------------------------------------------------------------------------------- align
def test_similarity_transform_exact():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (6, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -5.0])
    R = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ R.T + t
    M = align.similarity_transform(src, dst)
    np.testing.assert_allclose(M, np.hstack([R, t[:, None]]), atol=1e-9)
    # zero weights ignore outliers
    dst2 = dst.copy()
    dst2[5] += 50
    w = np.array([1, 1, 1, 1, 1, 0.0])
    np.testing.assert_allclose(align.similarity_transform(src, dst2, w), M, atol=1e-9)


def test_align_chip_puts_template_points_in_place():
    tpl = align.TEMPLATE_150
    # a face in a big image: template scaled 2x, rotated 10 degrees, shifted
    ang = np.deg2rad(10)
    R = 2.0 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    kps = tpl @ R.T + [300.0, 200.0]
    img = np.zeros((600, 700, 3), np.uint8)
    for x, y in kps[[0, 1, 3]]:  # bright 5x5 squares on eyes and mouth
        img[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 255
    chip, M = align.align_chip(img, kps)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    mapped = kps @ M[:, :2].T + M[:, 2]
    np.testing.assert_allclose(mapped, tpl, atol=1e-6)
    for x, y in tpl[[0, 1, 3]]:
        ys, xs = int(round(y)), int(round(x))
        assert chip[ys - 1 : ys + 2, xs - 1 : xs + 2].mean() > 100
    assert chip[5:20, 5:20].max() == 0


def test_warp_chip_pyramid_for_large_faces():
    # a face 8x larger than the chip goes through the pyramid and keeps geometry and brightness
    tpl = align.TEMPLATE_150
    kps = tpl * 8.0 + [100.0, 50.0]
    img = np.zeros((1400, 1400, 3), np.uint8)
    x0, y0 = kps[0].astype(int)
    img[y0 - 20 : y0 + 21, x0 - 20 : x0 + 21] = 200
    chip, M = align.align_chip(img, kps)
    x, y = np.round(tpl[0]).astype(int)
    assert abs(int(chip[y, x, 0]) - 200) <= 2
    assert chip[y + 6, x + 6].max() < 50
    # textured image: no aliasing -> chip close to an area-averaged reference
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    chip, _ = align.align_chip(noise, kps)
    assert abs(chip.astype(float).std() - 0) < 30  # pyramid low-passes the noise (raw samples: std ~74)


def test_letterbox_region_from_a_shrunk_image_maps_back_to_the_region():
    import cv2

    from mobidem.vision.blazeface import letterbox_region, shrink

    image = np.zeros((1080, 1920, 3), np.uint8)
    region = (645, 331, 1285, 971)  # not multiples of the factor
    x0, y0 = region[:2]
    cv2.rectangle(image, (x0 + 100, y0 + 200), (x0 + 299, y0 + 259), (255, 255, 255), -1)
    small = shrink(image, 3)
    assert small.shape == (360, 640, 3)
    for kwargs in ({}, {"small": small, "factor": 3}):
        boxed, lb = letterbox_region(image, region, 192, 0.0, **kwargs)
        ys, xs = np.nonzero(boxed[..., 0] > 127)
        corners = lb.to_original(np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]], float))
        # the rectangle in region coordinates is (100, 200) - (300, 260); one letterbox pixel = 3.3 px
        np.testing.assert_allclose(corners, [[100, 200], [300, 260]], atol=4.0)
        assert (lb.width, lb.height) == (640, 640)


def test_chip_template_per_detector():
    """A ChipTemplate's points and weights are what the similarity sends the keypoints onto; the default is
    BlazeFace's; a point without weight does not move the chip; bad templates are refused."""
    pts = np.array([[40.0, 40.0], [110.0, 40.0], [75.0, 80.0], [75.0, 100.0]])
    tpl = align.ChipTemplate("test", pts, [1.0, 1.0, 0.0, 1.0])
    kps = pts * 1.5 + [20.0, 30.0]
    M = align.chip_transform(kps, template=tpl)
    np.testing.assert_allclose(kps[[0, 1, 3]] @ M[:, :2].T + M[:, 2], pts[[0, 1, 3]], atol=1e-9)
    moved = kps.copy()
    moved[2] += 25.0  # the unweighted nose
    np.testing.assert_allclose(align.chip_transform(moved, template=tpl), M, atol=1e-9)
    # the default (no template) is BlazeFace's, and differs from this one
    np.testing.assert_allclose(align.chip_transform(kps), align.chip_transform(kps, template=align.BLAZEFACE))
    assert np.abs(align.chip_transform(kps) - M).max() > 0.01
    _, M2 = align.align_chip(np.zeros((300, 300, 3), np.uint8), kps, template=tpl)
    np.testing.assert_allclose(M2, M)
    with pytest.raises(ValueError):
        align.ChipTemplate("bad", pts, [1.0, 0.0, 0.0, 0.0])  # one weighted point cannot fix a similarity
    with pytest.raises(ValueError):
        align.ChipTemplate("bad", pts, [1.0, 1.0, 1.0])  # one weight per point


def test_detector_plugins_declare_their_chip_template():
    from mobidem import plugins

    assert plugins.DetectorPlugin.chip_template is align.BLAZEFACE
    assert plugins.load("blazeface").chip_template is align.BLAZEFACE
    if "yunet" in plugins.available():
        import mobidem_yunet

        assert plugins.load("yunet").chip_template is mobidem_yunet.CHIP_TEMPLATE is not align.BLAZEFACE
