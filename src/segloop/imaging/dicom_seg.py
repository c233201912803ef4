"""DICOM Segmentation (SEG) objects in and out, with highdicom.

Writing (`write_dicom_seg`)
---------------------------
A label map on the grid of a DICOM image series (as `segloop.imaging.dicom.read_dicom_series`
produces it: array ``(columns, rows, slices)``, voxel -> RAS+ affine) becomes a BINARY SEG:

* one segment per class value present in the label (background 0 excepted), numbered 1..N in
  increasing class value, labelled with the class name and coloured with the class's RGB
  converted to a recommended display CIELab value (sRGB, D65; `highdicom.color.CIELabColor`);
* each label slice is mapped back to its source instance **by geometry**: the slice's origin
  ``affine @ (0, 0, k)`` must equal one instance's ImagePositionPatient (within
  `position_tolerance`), and every instance must have the label grid's orientation, pixel
  spacing, rows and columns. Instance order in the folder is irrelevant. A label grid that
  does not match the series (other shape, other positions, other orientation) is refused with
  an `ImagingError` naming the SeriesInstanceUID (and the SOPInstanceUIDs involved);
* segmented property codes follow `segment_codes`: a class name that is the meaning of a
  concept in the DICOM segmentation-type context groups (CID 7166 tissue, CID 7159 lesion,
  CID 7192 anatomical structure, CID 7157/7158 physical objects) gets that SCT concept as its
  type and the group's category (Tissue, Morphologically Abnormal Structure, Anatomical
  Structure, Physical Object); any other name gets the generic category and type
  "Tissue" (SCT 85756007), as dcmqi does for unnamed segments. Callers may pass explicit codes.

Only single-frame source series are supported for writing (multi-frame sources are refused).

Reading (`read_dicom_seg`)
--------------------------
A SEG (BINARY, FRACTIONAL or LABELMAP) that references an already-read image series is turned
into a label map on that series' grid. Each frame is placed by its ImagePositionPatient (not by
its references), after checking the frame of reference, the referenced series, orientation,
pixel spacing and matrix size; any mismatch is an `ImagingError` naming the SEG's
SOPInstanceUID and the series UIDs. FRACTIONAL frames count a voxel as inside a segment when
its value is at least half of MaximumFractionalValue.

Overlap rule: where several segments cover a voxel, **the highest segment number wins** (a
later segment is drawn over earlier ones, as viewers do when they paint segments in order);
the number of voxels covered by two or more segments is reported as
`SegLabelMap.overlap_voxels` so callers can tell the user what was lost. ``on_overlap="error"``
refuses such SEGs instead.

Modules: `seg_codes` (SOP classes, property codes, `SegmentInfo`), `seg_source` (the source
series' headers and the geometry match), `seg_write`, `seg_read`. This module is the public API.
"""

from segloop.imaging.seg_codes import (
    ABNORMAL_STRUCTURE,
    AI_FAMILY,
    ANATOMICAL_STRUCTURE,
    GENERIC_CODES,
    LABELMAP_SEG_SOP_CLASS,
    PHYSICAL_OBJECT,
    SEG_SOP_CLASS,
    TISSUE,
    ClassSpec,
    CodePair,
    SegmentInfo,
    segment_codes,
)
from segloop.imaging.seg_read import (
    SegLabelMap,
    SegmentOverlap,
    is_dicom_seg,
    read_dicom_seg,
    seg_referenced_series,
)
from segloop.imaging.seg_source import load_source_headers
from segloop.imaging.seg_write import stable_seg_uids, write_dicom_seg

__all__ = [
    "ABNORMAL_STRUCTURE",
    "AI_FAMILY",
    "ANATOMICAL_STRUCTURE",
    "GENERIC_CODES",
    "LABELMAP_SEG_SOP_CLASS",
    "PHYSICAL_OBJECT",
    "SEG_SOP_CLASS",
    "TISSUE",
    "ClassSpec",
    "CodePair",
    "SegLabelMap",
    "SegmentInfo",
    "SegmentOverlap",
    "is_dicom_seg",
    "load_source_headers",
    "read_dicom_seg",
    "seg_referenced_series",
    "segment_codes",
    "stable_seg_uids",
    "write_dicom_seg",
]
