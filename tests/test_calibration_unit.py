"""Calibration's less travelled paths (the ROC maths is in test_gallery_unit.py): errors that name the
bad input, the summary calibrate() records, the file format and its atomic write, the descriptions a
refused start prints. Added for survivors of the mutation run (docs/TESTING.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobidem import calibration as cal

GEN = [0.30, 0.35, 0.40, 0.45, 0.62]
IMP = [0.50, 0.70, 0.80, 0.85, 0.90, 0.95, 1.00, 1.05, 1.10, 1.20]


@pytest.mark.parametrize("call", [
    cal.roc, cal.auc, cal.best_accuracy_threshold, lambda g, i: cal.threshold_at_far(g, i, 1e-2),
    lambda g, i: cal.operating_point(g, i, 1e-2),
], ids=["roc", "auc", "best_accuracy_threshold", "threshold_at_far", "operating_point"])
def test_bad_scores_are_refused_naming_the_input(call):
    for genuine, impostor, words in [([], IMP, "genuine is empty"), (GEN, [], "impostor is empty"),
                                     ([0.3, np.nan], IMP, "genuine contains NaN or infinity"),
                                     (GEN, [0.5, np.inf], "impostor contains NaN or infinity")]:
        with pytest.raises(ValueError) as info:
            call(genuine, impostor)
        assert str(info.value) == words


def test_each_function_checks_the_scores_it_reads():
    with pytest.raises(ValueError, match="^impostor is empty$"):
        cal.far_at([], 0.5)
    with pytest.raises(ValueError, match="^genuine is empty$"):
        cal.tar_at([], 0.5)
    with pytest.raises(ValueError, match=r"^far must be in \[0, 1\], got 1.5$"):
        cal.threshold_at_far(GEN, IMP, 1.5)
    with pytest.raises(ValueError, match=r"^far must be in \[0, 1\], got -0.1$"):
        cal.far_name(-0.1)
    # nested lists are read flat
    assert cal.far_at([[0.5, 0.7], [0.8, 0.85]], 0.7) == 0.5 and cal.tar_at(np.array([[0.3], [0.4]]), 0.3) == 0.5


def test_far_names():
    assert cal.far_name(1e-2) == "far_1e-2" and cal.far_name(1e-3) == "far_1e-3" and cal.far_name(1) == "far_1e0"
    assert cal.far_name(0.05) == "far_0.05" and cal.far_name(0) == "far_0"


def test_calibrate_records_the_summary_and_every_point():
    c = cal.calibrate(GEN, IMP, "dlib_resnet", "1", "test pairs", fars=(1e-1, 1e-2), onnx_sha256="ab" * 32)
    assert sorted(c.operating_points) == ["far_1e-1", "far_1e-2"]
    assert c.operating_points["far_1e-1"] == cal.operating_point(GEN, IMP, 1e-1)
    assert c.auc == cal.auc(GEN, IMP)
    assert (c.best_accuracy_threshold, c.best_accuracy) == cal.best_accuracy_threshold(GEN, IMP)
    assert c.best_accuracy_threshold is not None and c.best_accuracy > 0.9 and 0.9 < c.auc < 1.0
    assert (c.model_name, c.model_version, c.dataset, c.onnx_sha256) == ("dlib_resnet", "1", "test pairs", "ab" * 32)


def test_the_file_is_sorted_indented_json_written_atomically(tmp_path):
    c = cal.calibrate(GEN, IMP, "dlib_resnet", "1", "test pairs")
    path = tmp_path / "calibration.json"
    cal.save(path, c)
    assert path.read_text() == json.dumps(cal.to_json(c), indent=2, sort_keys=True) + "\n"  # reviewable diffs
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]
    assert cal.load(path) == c
    cal.save(str(path), c)  # a str path too, replacing the file
    assert cal.load(path) == c


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "calibration.json"
    good = cal.calibrate(GEN, IMP, "dlib_resnet", "1", "test pairs")
    cal.save(path, good)
    before = path.read_text()
    bad = cal.Calibration("dlib_resnet", "1", object())  # not JSON-serialisable
    with pytest.raises(TypeError):
        cal.save(path, bad)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]


def test_reading_fills_what_older_files_lack_and_refuses_what_it_cannot_read():
    d = cal.to_json(cal.calibrate(GEN, IMP, "dlib_resnet", "1", "test pairs", onnx_sha256="cd" * 32))
    del d["dataset"], d["embedder"]["onnx_sha256"]
    c = cal.from_json(d)
    assert c.dataset == "" and c.onnx_sha256 == ""
    with pytest.raises(ValueError, match="^unsupported calibration format_version 99$"):
        cal.from_json({**d, "format_version": 99})
    with pytest.raises(ValueError, match="^unsupported calibration format_version None$"):
        cal.from_json({k: v for k, v in d.items() if k != "format_version"})
    with pytest.raises(ValueError, match="^malformed calibration file: 'embedder'$"):
        cal.from_json({k: v for k, v in d.items() if k != "embedder"})


def test_descriptions_name_the_embedder_and_its_file():
    c = cal.Calibration("dlib_resnet", "1", "pairs", onnx_sha256="0123456789abcdef" * 4)
    described = "dlib_resnet version 1 (ONNX sha256 0123456789ab"
    assert c.describe().startswith(described)
    assert cal.Calibration("dlib_resnet", "1", "pairs").describe().startswith(
        "dlib_resnet version 1 (ONNX sha256 unrecorded")
    assert cal.embedder_mismatch(c, "dlib_resnet", "1", "0123456789abcdef" * 4) is None
    other_version = cal.embedder_mismatch(c, "dlib_resnet", "2", "")
    assert other_version.startswith(f"the calibration is for {described}")
    assert other_version.endswith(" but Triton serves dlib_resnet version 2 (ONNX sha256 unknown)")
    other_file = cal.embedder_mismatch(c, "dlib_resnet", "1", "f" * 64)
    assert other_file.endswith(" but the served model file is dlib_resnet version 1 (ONNX sha256 ffffffffffff)")


def test_best_accuracy_counts_an_impostor_at_the_threshold_as_accepted():
    """Found by the mutation run (docs/TESTING.md): a pair is accepted when distance <= threshold, so an
    impostor exactly at a candidate threshold is a false accept there. By hand, genuine [0.2, 0.4] and
    impostor [0.4, 0.6]: correct = 2 (accept nothing), 3 at 0.2, 2 + 1 = 3 at 0.4, 2 at 0.6; the first
    (smallest) maximum is 0.2 with 3 of 4 right."""
    assert cal.best_accuracy_threshold([0.2, 0.4], [0.4, 0.6]) == (0.2, 0.75)


def test_a_far_every_threshold_meets_gives_the_largest_observed_distance_of_both_kinds():
    """threshold_at_far's docstring: when far * m >= m the largest observed distance is returned, and
    genuine distances are observed distances too."""
    assert cal.threshold_at_far([0.3, 1.5], IMP, 1.0) == 1.5
    assert cal.threshold_at_far(GEN, IMP, 1.0) == 1.20


def test_the_default_operating_point_is_far_1e_3():
    """The proto's and Settings' default operating point is far_1e-3."""
    impostor = np.linspace(0.5, 1.5, 200)  # 2 false accepts allowed at 1e-2, none at 1e-3
    c = cal.calibrate(GEN, impostor, "dlib_resnet", "1", "test pairs", fars=(1e-2, 1e-3))
    assert c.threshold() == c.operating_points["far_1e-3"].threshold != c.threshold("far_1e-2")


def test_the_description_is_the_embedder_its_file_and_its_metric():
    c = cal.Calibration("sface", "1", "pairs", onnx_sha256="0123456789abcdef" * 4, metric="cosine")
    assert c.describe() == "sface version 1 (ONNX sha256 0123456789ab, cosine distance)"


def test_the_metric_is_recorded_and_read_back_and_an_unknown_one_is_refused(tmp_path):
    """Each embedder's file names its metric (the module docstring); files without one are euclidean,
    and euclidean files are written as before metrics existed (no `metric` key)."""
    cosine = cal.calibrate(GEN, IMP, "sface", "1", "test pairs", metric="cosine")
    assert cosine.metric == "cosine"
    assert cal.to_json(cosine)["embedder"]["metric"] == "cosine"
    cal.save(tmp_path / "c.json", cosine)
    assert cal.load(tmp_path / "c.json").metric == "cosine"
    euclidean = cal.to_json(cal.calibrate(GEN, IMP, "dlib_resnet", "1", "test pairs"))
    assert "metric" not in euclidean["embedder"] and cal.from_json(euclidean).metric == "euclidean"
    with pytest.raises(ValueError) as info:
        cal.calibrate(GEN, IMP, "x", "1", "test pairs", metric="manhattan")
    assert str(info.value) == "unknown metric 'manhattan'; known: euclidean, cosine"
    d = cal.to_json(cosine)
    d["embedder"]["metric"] = "manhattan"
    with pytest.raises(ValueError) as info:
        cal.from_json(d)
    assert str(info.value) == "calibration file: unknown metric 'manhattan'; known: euclidean, cosine"


def test_the_temporary_file_is_made_beside_the_file(tmp_path, monkeypatch):
    """Found by the mutation run: save's rename is atomic only within one file system, so the temporary
    file is made in the file's own folder, never in the system's temporary folder."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    (tmp_path / "data").mkdir()
    c = cal.calibrate(GEN, IMP, "dlib_resnet", "1", "test pairs")
    cal.save(tmp_path / "data" / "calibration.json", c)
    assert cal.load(tmp_path / "data" / "calibration.json") == c
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["calibration.json"]
