"""De-identification of DICOM headers: the Basic Application Level Confidentiality Profile.

`Deidentifier.apply(ds)` changes a dataset in place following DICOM PS3.15 Annex E, Table
E.1-1, basic profile column (no options), as far as the attributes segloop meets go:

* **direct identifiers replaced** by pseudonyms: PatientName becomes ``ANON^<n>`` and
  PatientID ``ANON-<random>`` (one pseudonym per original patient id, consistent within one
  `Deidentifier`, and across imports when the same mapping is loaded);
* **other identifying attributes removed or emptied**: birth date, sex, age, size, weight,
  addresses, telephone numbers, other ids/names, physicians and operators, institution and
  station, device serial number, accession number, study id, all dates and times (study,
  series, acquisition, content), descriptions and comments (study/series description,
  protocol name, image comments), referenced patient/study sequences and request attributes;
* **every person name** (VR PN) left anywhere, sequences included, is emptied;
* **all private attributes and overlay/curve groups (60xx/50xx)** are removed;
* **UIDs** (study, series, SOP instance, frame of reference and any instance UID inside
  sequences) are replaced by new ones, consistently: the same original UID always becomes
  the same new UID, so references between instances still hold. Standard UIDs (SOP classes,
  transfer syntaxes, coding schemes) are kept;
* PatientIdentityRemoved = YES, DeidentificationMethod and the DeidentificationMethodCode
  (DCM 113100, "Basic Application Confidentiality Profile") are added.

**Geometry is kept**: ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, Rows/Columns and the pixel module are not touched, so the de-identified series
reads to the same volume. Pixels are not inspected: a series whose BurnedInAnnotation is YES is
refused (`ImagingError`), since the basic profile then requires cleaning the pixel data.

Whether the original → pseudonym mapping is kept is the caller's choice: `mapping` holds it
(patient ids and UIDs), and segloop only writes it to a file when asked (``--deid-map``).
"""

from __future__ import annotations

import secrets
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from segloop.imaging.errors import ImagingError

PROFILE = "PS3.15 E.1 Basic Application Confidentiality Profile"

# Basic profile actions X (remove) / Z (empty) / D (dummy) for the attributes below; names
# are replaced separately; dates, times and descriptions are removed (no retain options).
REMOVE = (
    "PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "PatientBirthName",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID",
    "MedicalRecordLocator", "EthnicGroup", "Occupation", "MilitaryRank", "BranchOfService",
    "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference", "AdditionalPatientHistory",
    "PatientComments", "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus",
    "LastMenstrualDate", "PatientState", "CurrentPatientLocation", "PatientInsurancePlanCodeSequence",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician", "OperatorsName",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "DetectorID", "PlateID", "GantryID", "CassetteID",
    "SeriesDate", "AcquisitionDate", "AcquisitionDateTime", "SeriesTime", "AcquisitionTime",
    "InstanceCreationDate", "InstanceCreationTime", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "ScheduledProcedureStepID",
    "RequestedProcedureID", "RequestAttributesSequence", "ReferencedPatientSequence",
    "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence", "AdmissionID",
    "AdmittingDiagnosesDescription", "StudyDescription", "SeriesDescription", "ProtocolName",
    "ImageComments", "FrameComments", "DerivationDescription", "RequestedProcedureDescription",
    "ReasonForStudy", "AcquisitionComments", "TextComments", "ContributionDescription",
    "PersonName", "VerifyingObserverName", "ContentCreatorName", "IssuerOfAccessionNumberSequence",
)
EMPTY = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ContentDate", "ContentTime",
         "ReferringPhysicianName")
# Standard UIDs (SOP classes, transfer syntaxes...) are listed in pydicom's UID dictionary.
_KEEP_UID_KEYWORDS = {"SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID",
                      "MediaStorageSOPClassUID", "ImplementationClassUID", "CodingSchemeUID",
                      "ContextGroupExtensionCreatorUID", "MappingResourceUID"}


class Deidentifier:
    """Applies the basic profile with pseudonyms and UID replacements kept in `mapping`.

    Args:
        mapping: an earlier mapping (``{"patients": {...}, "uids": {...}}``) to stay consistent
            with (e.g. loaded from a ``--deid-map`` file); updated in place.
    """

    def __init__(self, mapping: dict[str, dict[str, str]] | None = None) -> None:
        self.mapping = mapping if mapping is not None else {}
        self.mapping.setdefault("patients", {})
        self.mapping.setdefault("uids", {})

    def patient(self, patient_id: str) -> str:
        patients = self.mapping["patients"]
        if patient_id not in patients:
            patients[patient_id] = f"ANON-{secrets.token_hex(5).upper()}"
        return patients[patient_id]

    def uid(self, original: str) -> str:
        uids = self.mapping["uids"]
        if original not in uids:
            uids[original] = str(generate_uid())
        return uids[original]

    def apply(self, ds: Dataset, *, where: str | None = None) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it.

        Raises:
            ImagingError: BurnedInAnnotation is YES (the pixels themselves identify).
        """
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise ImagingError(
                where, "BurnedInAnnotation is YES: the pixels carry identifying text; refused with --deidentify"
            )
        pseudonym = self.patient(str(ds.get("PatientID", "") or "").strip())
        ds.remove_private_tags()
        self._walk(ds)
        ds.PatientID = pseudonym
        ds.PatientName = pseudonym.replace("-", "^", 1)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = PROFILE
        code = Dataset()
        code.CodeValue = "113100"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = UID(self.uid(str(meta.MediaStorageSOPInstanceUID)))
        return ds

    def _walk(self, ds: Dataset) -> None:
        for keyword in REMOVE:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword in EMPTY:
            if keyword in ds:
                ds.data_element(keyword).value = ""  # type: ignore[union-attr]
        for tag in list(ds.keys()):
            group = tag.group
            if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                del ds[tag]
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value or []:
                    self._walk(item)
            elif elem.VR == "PN":
                elem.value = ""
            elif elem.VR == "UI" and elem.value and elem.keyword not in _KEEP_UID_KEYWORDS:
                elem.value = self._replace_uids(elem.value)

    def _replace_uids(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return [self._replace_uid(str(v)) for v in value]
        return self._replace_uid(str(value))

    def _replace_uid(self, value: str) -> str:
        if not value or UID(value).name != value:  # a standard UID with a name: keep
            return value
        return self.uid(value)
