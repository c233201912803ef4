"""The pure conversions of the compatibility surface: click params, result formats, Slicer's
``label_info`` remapping, OHIF's ``.bin`` labels, and the multipart answer as MONAI Label's
client parses it. No server here."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segloop.ml.clicks import Click
from segloop.server.monailabel import convert
from segloop.store.records import LabelClass, LabelSchema

SCHEMA = LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "Anterior"), LabelClass(2, "Posterior")))
SHAPE = (10, 12, 8)


def test_deepgrow_points_belong_to_the_named_label_and_background_is_class_0() -> None:
    req = convert.parse_clicks({"label": "posterior", "foreground": [[1, 2, 3], [4.0, 5.4, 6.6]],
                                "background": [[0, 0, 0]]}, SCHEMA, SHAPE)
    assert req.label == 2
    assert req.clicks == [Click(2, (1, 2, 3)), Click(2, (4, 5, 7)), Click(0, (0, 0, 0))]


def test_deepedit_per_label_lists_and_options_that_are_not_classes() -> None:
    params = {"Anterior": [[1, 1, 1]], "Posterior": [], "background": [[2, 2, 2]], "label": "Anterior",
              "roi": [1, 2], "result_extension": ".nrrd", "some_option": [[1, 1, 1]]}
    req = convert.parse_clicks(params, SCHEMA, SHAPE)
    assert req.clicks == [Click(1, (1, 1, 1)), Click(0, (2, 2, 2))]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"foreground": [[1, 1, 1]]}, "need 'label'"),
        ({"label": "Lung", "foreground": [[1, 1, 1]]}, "unknown label 'Lung'"),
        ({"label": "Anterior", "foreground": [[10, 0, 0]]}, "outside the volume"),
        ({"label": "Anterior", "foreground": [[1, 1]]}, "is not [i, j, k]"),
        ({"label": "Anterior", "foreground": [["a", 1, 1]]}, "not numeric"),
        ({"label": "Anterior", "foreground": "1,2,3"}, "must be a list"),
    ],
)
def test_bad_click_params_name_the_problem(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(convert.ParamsError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        convert.parse_clicks(params, SCHEMA, SHAPE)


def test_result_format_defaults_and_refusals() -> None:
    assert convert.result_format({}) == (".nii.gz", "uint8", True)
    assert convert.result_format({"result_extension": "nrrd", "result_compress": "false"}) == (".nrrd", "uint8", False)
    assert convert.result_format({"result_extension": ".nii.gz", "result_compress": False})[0] == ".nii"
    with pytest.raises(convert.ParamsError, match="result_extension"):
        convert.result_format({"result_extension": ".png"})
    with pytest.raises(convert.ParamsError, match="result_dtype"):
        convert.result_format({"result_dtype": "complex64"})


def test_slicer_label_info_maps_segment_indices_to_schema_values() -> None:
    arr = np.array([[[0, 1, 2]]], dtype=np.uint8)
    info = [{"name": "Posterior", "idx": 1}, {"name": "Anterior", "idx": 2}]
    assert convert.remap_label_info(arr, info, SCHEMA).tolist() == [[[0, 2, 1]]]
    # values not all described: taken as schema values as they are
    assert convert.remap_label_info(arr, [{"name": "Posterior", "idx": 1}], SCHEMA).tolist() == [[[0, 1, 2]]]
    with pytest.raises(convert.ParamsError, match="unknown label 'Liver'"):
        convert.remap_label_info(arr, [{"name": "Liver", "idx": 1}], SCHEMA)


def test_ohif_binary_label_is_first_index_fastest(tmp_path: Path) -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[3, 4, 5] = 1
    path = tmp_path / "label.bin"
    path.write_bytes(label.tobytes(order="F"))
    got = convert.read_label_file(path, "label.bin", SHAPE)
    assert isinstance(got, np.ndarray) and np.argwhere(got).tolist() == [[3, 4, 5]]
    with pytest.raises(convert.ParamsError, match="voxels"):
        convert.read_label_file(path, "label.bin", (2, 2, 2))


def test_multipart_answer_parses_with_monai_labels_client() -> None:
    from monailabel.client.client import MONAILabelUtils

    meta = {"label_names": {"Anterior": 1}, "latencies": {"total": 0.1}}
    body, ctype = convert.multipart(meta, "case-1234abcd.nrrd", b"\x00NRRD\r\n--not-a-boundary\x01", "application/octet-stream")

    class Headers(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override,unused-ignore]
            return super().get(key.lower(), default)

    form, files = MONAILabelUtils.parse_multipart(io.BytesIO(body), Headers({"content-type": ctype,
                                                                             "content-length": str(len(body))}))
    assert json.loads(form["params"]) == meta
    assert files == {"case-1234abcd.nrrd": b"\x00NRRD\r\n--not-a-boundary\x01"}
    name = convert.result_filename("../../etc/passwd", ".nii.gz")
    assert "/" not in name and name.endswith(".nii.gz")
