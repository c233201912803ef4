"""A MONAI-Label-compatible REST surface, so MONAI Label's clients (its Python client, its
3D Slicer module, its OHIF plugin) can use segloop as their server unchanged.

The routes sit beside the native API (no ``/api/v1`` prefix, not in the OpenAPI schema) and
call segloop's own services — the datastore, the `PredictorCache` and `WorkerPool`, the
`SessionManager`, the job runner, `segloop.activelearning` — with the native API's principals
and roles (an open loopback server needs no credentials; with auth on, clients send
``Authorization: Bearer <token>`` as MONAI Label's clients do after ``update_auth``).

======  ==========================================  ========  =========================================
method  path                                        role      what
======  ==========================================  ========  =========================================
GET     /info/                                      annotator labels, models, trainers, strategies, stats
POST    /infer/{model}?image=&session_id=&output=   annotator automatic / click-driven segmentation
POST    /activelearning/{strategy}                  annotator next image; ``{}`` when none is left
GET     /datastore/?output=stats|all|train          annotator datastore summary / objects / final labels
PUT     /datastore/?image= (deprecated), /image     reviewer  upload an image under an id
GET|HEAD|DELETE /datastore/image?image=             ann/admin download / exists (check_sum) / delete
PUT     /datastore/label?image=&tag=                annotator save as a new revision on top of the latest
GET|HEAD /datastore/label?label=&tag=               annotator download a label revision
GET|PUT /datastore/image/info, /datastore/label/info ann     info (client info is kept, segloop's wins)
GET     /datastore/dataset?limit_cases=             annotator final labels as an MSD-layout zip
GET     /train/?check_if_running=&all=              annotator training task status (404: none)
POST    /train/{model}, /train/; DELETE /train/     admin     start (a segloop training job) / stop
PUT     /session/; GET|DELETE /session/{id}         annotator keep an uploaded image for /infer
GET     /logs/?lines=                               annotator background jobs' log lines (text)
GET|POST /scoring/[...]; DELETE -                   annotator scoring jobs; GET /scoring/{strategy}: scores
======  ==========================================  ========  =========================================

Decisions
---------
- **Models.** Each segloop model with a trained version appears twice in ``/info/``: ``<model>``
  (type ``segmentation``: automatic; it also honours clicks) and ``<model>_interactive`` (type
  ``deepgrow``: foreground/background points for the ``label`` named in params, answered as a
  binary mask of that label, value 1 — what Slicer's and OHIF's DeepGrow panels expect). Label
  values in every other answer are the schema's class values, which are the values ``/info/``
  lists; ``restore_label_idx`` is therefore accepted and has nothing to change.
- **Clicks.** ``foreground``/``background`` (with ``label``) and per-label lists
  ``{"<class>": [[i, j, k], ...]}`` (DeepEdit) are IJK voxel indices of the image as the client
  loaded it (rounded to the nearest voxel). MONAI Label's clients send every click with every
  request; segloop keeps one implicit interactive session per (user, image, model version) and
  only runs the network for the clicks it has not seen (a removed click starts afresh).
- **Orientation.** segloop keeps every image in the voxel order it was imported in:
  NIfTI/NRRD in the file's own order (which is 3D Slicer's IJK for that file, and MONAI Label's),
  DICOM series as ``i`` = column index (along the first ImageOrientationPatient vector), ``j`` =
  row index, ``k`` = slices sorted ascending along row x column — the IJK that 3D Slicer (ITK),
  OHIF/cornerstone3D and MONAI Label's own DICOM conversion give the same series. Results carry
  the image's affine (NIfTI sform/qform; NRRD in LPS, as Slicer writes).
- **Labels saved** through ``/datastore/label`` become new revisions (source ``manual``) on top
  of the latest; tag ``final`` (MONAI Label's default) saves final for reviewers and a draft for
  annotators (the answer says so). Tags read back: ``final``, ``latest``, ``original`` (revision 1)
  or a revision number. Images are never overwritten: an upload under an existing id with other
  content is a 409.
- **Active learning** never answers 500: ``{}`` when no image lacks a final label. Model-based
  strategies follow ``GET /api/v1/next``'s rule (`segloop.server.scoring`: cached scores of the
  model's current version; the few uncached images scored at once in the worker pool); where
  ``/next`` answers 202 (a background score job fills the cache — started or joined, the same
  job ``/next`` uses) or 409/422 (scoring failed recently, strategy unusable for the model), this
  surface answers a random image marked ``"fallback": "random"`` with the reason and job id.
- Absolute server paths (``path`` in image info, ``output=train``) are only given by an open
  (loopback) server, where the client runs on the same machine.
"""

from segloop.server.monailabel.routes import router

__all__ = ["router"]
