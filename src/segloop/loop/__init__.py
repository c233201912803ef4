"""Layer 4, loop: select -> annotate -> save -> retrain, and its emulation with a virtual user.

- `annotator`: the `Annotator` protocol and the `VirtualAnnotator` (clicks from a reference).
- `active_loop`: `ActiveLearningLoop`, holding the shared model version; background trainings
  switch it only when the new version is better on the validation images.
- `evaluation`: Dice/IoU of a model version on (image, reference) pairs.
- `emulate`: ``segloop emulate`` (the SAIM protocol on an MSD dataset; resumable).
"""

from segloop.loop.active_loop import ActiveLearningLoop, AnnotationOutcome, RoundResult, TrainingOutcome
from segloop.loop.annotator import Annotation, AnnotationTask, Annotator, VirtualAnnotator

__all__ = [
    "ActiveLearningLoop",
    "Annotation",
    "AnnotationOutcome",
    "AnnotationTask",
    "Annotator",
    "RoundResult",
    "TrainingOutcome",
    "VirtualAnnotator",
]
