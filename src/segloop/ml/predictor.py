"""Automatic segmentation with a trained model version: `Predictor`, `Prediction`.

- `Predictor.predict`: whole-volume automatic segmentation (MONAI sliding windows, zero guidance),
  with nnU-Net's test-time mirroring: the mean of the plain pass and one pass per axis the model's
  training flipped (`mirror_axes`; segloop's default flips the first axis, so two passes), then the
  model's post-processing (`segloop.ml.postprocess`). An interactive session starts from the same
  result; its clicks' passes are single (a click answers in well under a second on a CPU).
- `Predictor.session` -> `segloop.ml.session.InteractiveSession`: click-by-click (and prompt)
  refinement of one image, on the same pre-processed image (`PreparedImage`).
- Results (`Prediction`) are on the image's own grid: labels (uint8 class values) and softmax
  probabilities ``(C, X, Y, Z)``, C = number of classes incl. background, in the model's class order.

Set ``Predictor.mc_dropout = True`` to keep dropout active at inference (MC-dropout uncertainty);
each call then gives a different sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from segloop.imaging.volume import Volume
from segloop.ml.clicks import Click
from segloop.ml.inference import predict_probabilities, set_mc_dropout
from segloop.ml.modelspec import ModelSpec, load_checkpoint
from segloop.ml.postprocess import keep_largest
from segloop.ml.preprocess import resample, resampled_shape, zoom_factors
from segloop.ml.train_config import mirror_axes
from segloop.store.base import Datastore
from segloop.store.errors import NotFoundError

if TYPE_CHECKING:
    from segloop.ml.session import InteractiveSession


@dataclass
class Prediction:
    """A segmentation on the image's grid.

    Attributes:
        label: uint8 class values, ``(X, Y, Z)``, same affine as the image.
        probabilities: float32 ``(C, X, Y, Z)``; channel ``n`` is class ``class_values[n]``.
        model, version: the model version that produced it.
        seconds: wall time of the call that produced it.
        class_values: class value of each probability channel.
        clicks: the clicks it honours (interactive sessions).
        step: interactive sessions: which state of the session's mask this is (a number that
            grows with every step of the session); 0 otherwise.
        changed: interactive sessions: ``(step, box)`` — this mask differs from the mask of the
            session's state ``step`` (the one before) only inside ``box`` (slices of image
            voxels), so an encoder that sent that state can re-encode the box alone; None when
            there is no previous state.
    """

    label: Volume
    probabilities: np.ndarray
    model: str
    version: int
    seconds: float
    class_values: tuple[int, ...] = ()
    clicks: tuple[Click, ...] = field(default_factory=tuple)
    step: int = 0
    changed: tuple[int, tuple[slice, ...]] | None = None


@dataclass
class PreparedImage:
    """An image pre-processed for the model (cached by sessions)."""

    volume: Volume
    data: np.ndarray  # (C_img, Xm, Ym, Zm) float32 on the model grid
    factors: tuple[float, float, float] | None  # image index * factor = model index; None: same grid

    @property
    def model_shape(self) -> tuple[int, int, int]:
        s = self.data.shape[1:]
        return (int(s[0]), int(s[1]), int(s[2]))


class Predictor:
    """A loaded model version, ready to segment images."""

    def __init__(self, net: torch.nn.Module, spec: ModelSpec, model: str, version: int, device: torch.device) -> None:
        self.net = net
        self.spec = spec
        self.model = model
        self.version = version
        self.device = device
        self.mc_dropout = False
        # Interactive merge: None replaces the whole ROI (tapered at its border); a radius (mm)
        # only takes the new prediction near the new clicks, leaving the rest of the mask alone.
        self.merge_radius_mm: float | None = None
        # Test-time mirroring of automatic results: the axes training flipped (imported models: none).
        train = spec.extra.get("train")
        self.mirror_axes = mirror_axes(train.get("flip_axes") if isinstance(train, dict) else None)

    @classmethod
    def load(
        cls,
        store: Datastore,
        model: str,
        version: int | None = None,
        device: str | torch.device | None = None,
    ) -> Predictor:
        """Load ``model`` at ``version`` (default: the current version) from ``store``.

        Raises:
            NotFoundError: unknown model or version, or a model without any trained version.
        """
        record = store.get_model(model)
        if version is None and record.current_version is None:
            raise NotFoundError(f"model {model!r} has no trained version yet")
        v = record.version(version)
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if (v.config.get("network") or {}).get("arch") == "torchscript":  # imported: the file is the model
            spec = ModelSpec.from_config(v.config)
            net: torch.nn.Module = torch.jit.load(str(v.checkpoint), map_location=dev)
        else:
            ckpt = load_checkpoint(v.checkpoint, map_location=dev)
            spec = ModelSpec.from_config(v.config or ckpt["config"])
            net = spec.build()
            net.load_state_dict(ckpt["state_dict"])
        net.to(dev)
        net.eval()
        return cls(net, spec, model, v.version, dev)

    @property
    def class_values(self) -> tuple[int, ...]:
        return tuple(self.spec.class_values)

    def require_interactive(self, what: str = "clicks") -> None:
        """ValueError when the model takes no guidance (an imported automatic-only model)."""
        if not self.spec.interactive:
            raise ValueError(
                f"model {self.model!r} version {self.version} is automatic-only (input kind automatic: "
                f"imported, no guidance input), so it cannot follow {what}; correct its result with the "
                f"brush, or use an interactive segloop model"
            )

    def prepare(self, image: Volume) -> PreparedImage:
        """Normalise and resample ``image`` to the model grid. ValueError on a channel mismatch."""
        if image.channels != self.spec.image_channels:
            raise ValueError(
                f"the image has {image.channels} channel(s), model {self.model!r} version {self.version} "
                f"expects {self.spec.image_channels}"
            )
        data = self.spec.normalize(image.array)
        factors = zoom_factors(image.spacing, self.spec.spacing)
        if factors is not None:
            data = resample(data, resampled_shape(image.shape, factors), order=1)
        return PreparedImage(image, data, factors)

    def _probabilities(self, data: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        set_mc_dropout(self.net, self.mc_dropout)
        spec = self.spec
        return predict_probabilities(
            self.net, data, extra, spec.patch_size, spec.num_classes, self.device, extra_channels=spec.extra_channels
        )

    def automatic_probabilities(self, data: np.ndarray) -> np.ndarray:
        """Click-free probabilities ``(C, Xm, Ym, Zm)`` of a prepared image ``(C_img, Xm, Ym, Zm)``: the
        mean of the plain pass and of one pass per axis of `mirror_axes` on the mirrored image."""
        probs = self._probabilities(data, None)
        for ax in self.mirror_axes:
            flipped = self._probabilities(np.ascontiguousarray(np.flip(data, axis=ax + 1)), None)
            probs += np.flip(flipped, axis=ax + 1)
        if self.mirror_axes:
            probs /= 1 + len(self.mirror_axes)
        return probs

    def to_image_grid(self, probs: np.ndarray, prepared: PreparedImage) -> np.ndarray:
        """Model-grid probabilities ``(C, Xm, Ym, Zm)`` -> image grid ``(C, X, Y, Z)``."""
        if prepared.factors is None:
            return probs
        return resample(probs, prepared.volume.shape, order=1)

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        """Class values (uint8) of the most probable class per voxel."""
        lut = np.asarray(self.spec.class_values, dtype=np.uint8)
        return lut[probs.argmax(axis=0)]

    def postprocess(self, probs: np.ndarray) -> np.ndarray:
        """The automatic label of ``probs`` ``(C, X, Y, Z)``: the most probable class, then the model's
        ``keep_largest`` rule (`segloop.ml.postprocess`). Voxels the rule sets to background become
        certain background in ``probs`` (in place), so the label stays the probabilities' arg-max."""
        label, dropped = keep_largest(self.labels_from(probs), self.spec.keep_largest)
        if dropped is not None:
            background = np.zeros(probs.shape[0], dtype=probs.dtype)
            background[self.spec.class_values.index(0)] = 1
            probs[:, dropped] = background[:, None]
        return label

    def predict(self, image: Volume) -> Prediction:
        """Automatic (click-free) segmentation of the whole volume."""
        t0 = time.perf_counter()
        prepared = self.prepare(image)
        probs = self.to_image_grid(self.automatic_probabilities(prepared.data), prepared)
        label = self.postprocess(probs)
        return Prediction(
            Volume(label, image.affine.copy(), {"source": f"model:{self.model}@{self.version}"}),
            probs.astype(np.float32, copy=False),
            self.model,
            self.version,
            time.perf_counter() - t0,
            self.class_values,
        )

    def session(self, image: Volume, initial: Volume | None = None) -> InteractiveSession:
        """Start an interactive session on ``image``; ``initial`` (a label on its grid) replaces the automatic start."""
        from segloop.ml.session import InteractiveSession

        return InteractiveSession(self, image, initial)
