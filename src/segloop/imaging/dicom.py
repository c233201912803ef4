"""Reading DICOM image series into `Volume` (pydicom; nibabel.nicom for Siemens mosaics).

Two steps, so that discovery stays fast:

1. `scan_dicom` reads only the headers (``stop_before_pixels``), sorts files into series and
   checks their geometry. It returns `DicomSeries` objects, the files it skipped (non-image
   DICOM objects such as SEG, RTSTRUCT, SR, PR, with the reason) and one `ImagingError` per
   bad file or series.
2. `DicomSeries.read` decodes the pixels and returns the `Volume`.

Skipped, not errors
-------------------
* Non-image objects, by SOP class (or Modality where the SOP class is blank): SEG, RTSTRUCT,
  RTDOSE, RTPLAN and other RT objects (RT Image excepted), SR, PR, KO, waveforms, encapsulated
  documents, registrations, DICOMDIR.
* 2-D images without patient geometry (no ImagePositionPatient/ImageOrientationPatient/
  PixelSpacing) whose modality is not CT, MR, PT, NM or ST: screenshots, dose reports,
  radiographs. For those five modalities missing geometry is an error.

Errors (`ImagingError`, naming the file or the series folder): not a DICOM file, unreadable
header, an image without pixel data, a transfer syntax no installed decoder handles, pixel data
that fails to decode (at `DicomSeries.read`, naming the transfer syntax), duplicate or uneven
slice positions (below), a multi-frame file without per-frame geometry.

Grouping rules
--------------
* Files are grouped by SeriesInstanceUID **and** geometry: FrameOfReferenceUID, Rows/Columns,
  PixelSpacing (to 1e-3 mm), samples per pixel and ImageOrientationPatient (cosines equal
  within 1e-3). So one UID shared by differently shaped/oriented stacks gives several volumes.
* Where SeriesInstanceUID is blank, the folder (relative to the scanned root) and the
  StudyInstanceUID stand in for it, together with the same geometry fields.
* A group in which several files project to the same slice position is split by the first of
  EchoNumbers, TemporalPositionIdentifier, AcquisitionNumber, TriggerTime, ImageType that
  leaves every part free of duplicates; when none does, the group is refused (stacking it
  would interleave volumes).
* A Siemens mosaic file (ImageType contains MOSAIC) and an enhanced multi-frame file are each
  one volume on their own, even where several share a SeriesInstanceUID.

Geometry
--------
Slices are sorted along the slice normal ``n = row_cosine x column_cosine`` by the projection of
ImagePositionPatient on ``n``. The array is ``(columns, rows, slices)`` so ``array[i, j, k]`` has
``i`` along the IOP row direction (the first three IOP values) and ``j`` along the column
direction. The affine's third column is the mean step between consecutive slice positions (so
oblique and gantry-tilted series keep their true geometry); it is converted from DICOM LPS to
RAS+ by negating its first two rows. A single-slice series gives ``Z = 1`` with the slice
thickness (or SpacingBetweenSlices, or 1 mm) as its third spacing.

Gap policy
----------
A series whose slice spacing is not uniform is **refused** with an `ImagingError` naming the
series folder, the two positions around the gap and the expected spacing. The expected
spacing is the median step between sorted positions; a step that differs from it by more than
``GAP_TOLERANCE`` (10 %) of the spacing, or slice positions that do not lie on one line within
the same tolerance, is an error. Missing slices are never interpolated.

Pixel values
------------
RescaleSlope/RescaleIntercept are applied per slice. When they are all integral the result is
an integer array (the stored dtype when there is no rescale, otherwise int16 or int32, the
smallest that holds the values); otherwise float32. Colour (RGB) series are ``(X, Y, Z, 3)``.

Modules
-------
This module is the public face; the code lives in:

* `segloop.imaging.dicom_header`: one instance's header, from a file or bytes; non-image objects.
* `segloop.imaging.dicom_scan`: `scan_dicom`, headers grouped into series (the grouping rules).
* `segloop.imaging.dicom_geometry`: slice ordering, spacing and gap checks, the affine.
* `segloop.imaging.dicom_series`: `DicomSeries` and its assembly into a `Volume`.
* `segloop.imaging.dicom_pixels`: pixel decoding, transfer syntaxes, stacking and rescaling.
* `segloop.imaging.dicom_read`: exactly one volume from files (`read_dicom_series`) or from
  in-memory instances such as a WADO-RS answer (`read_dicom_parts`).
"""

from __future__ import annotations

from segloop.imaging.dicom_geometry import GAP_TOLERANCE
from segloop.imaging.dicom_header import (
    SEG_REASON,
    DicomHeader,
    header_from_bytes,
    looks_like_dicom,
    non_image_reason,
    read_dicom_header,
)
from segloop.imaging.dicom_read import PartsRead, read_dicom_parts, read_dicom_series
from segloop.imaging.dicom_scan import CROSS_SECTIONAL_MODALITIES, DicomScan, scan_dicom
from segloop.imaging.dicom_series import DicomSeries, sanitize_name

__all__ = [
    "CROSS_SECTIONAL_MODALITIES",
    "GAP_TOLERANCE",
    "SEG_REASON",
    "DicomHeader",
    "DicomScan",
    "DicomSeries",
    "PartsRead",
    "header_from_bytes",
    "looks_like_dicom",
    "non_image_reason",
    "read_dicom_header",
    "read_dicom_parts",
    "read_dicom_series",
    "sanitize_name",
    "scan_dicom",
]
