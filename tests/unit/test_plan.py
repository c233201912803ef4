"""Fingerprint -> plan on small made-up volumes: spacing, patch, normalisation, throughput."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.ml.fingerprint import Fingerprint, fingerprint_arrays, structure_size
from segloop.ml.networks import size_divisor
from segloop.ml.plan import (
    CPU_PATCH_VOXELS,
    FG_RATIO_LARGE,
    FG_RATIO_SMALL,
    GPU_PATCH_VOXELS,
    MIN_VOXELS_ACROSS,
    calibrate,
    context_spacing,
    make_plan,
    patch_for,
    pooling_cost,
    pooling_strides,
)


def _fp(shape: tuple[int, int, int], spacing: tuple[float, float, float], modality: str = "MR", n: int = 5,
        pct: tuple[float, float] = (0.0, 100.0)) -> Fingerprint:
    return Fingerprint(n, modality, 1, (shape,) * n, (spacing,) * n, pct, 50.0, 20.0, {1: 1000.0})


def test_small_images_get_their_median_shape_rounded_to_the_divisor() -> None:
    p = make_plan(_fp((35, 50, 36), (1.0, 1.0, 1.0)))
    assert p.patch_size == (40, 56, 40) and p.spacing == (1.0, 1.0, 1.0) and p.intensity is None
    assert not any("capped" in n for n in p.notes)


def test_large_images_get_a_patch_within_the_cpu_budget() -> None:
    p = make_plan(_fp((256, 256, 160), (1.0, 1.0, 1.0)))
    assert np.prod(p.patch_size) <= CPU_PATCH_VOXELS and all(v % 8 == 0 for v in p.patch_size)
    assert p.patch_size == (64, 64, 64)  # as long in mm on every axis (isotropic grid: a cube)
    assert any("capped" in n for n in p.notes)
    gpu = make_plan(_fp((256, 256, 160), (1.0, 1.0, 1.0)), device="cuda")
    assert np.prod(gpu.patch_size) > np.prod(p.patch_size)


def test_anisotropic_axis_keeps_its_tenth_percentile_spacing() -> None:
    fp = Fingerprint(10, "CT", 1, ((512, 512, 60),) * 10,
                     tuple((0.8, 0.8, s) for s in (2.5, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)),
                     (-100.0, 300.0), 40.0, 60.0, {1: 5000.0})
    p = make_plan(fp)
    assert p.spacing[:2] == (0.8, 0.8) and p.spacing[2] == pytest.approx(np.percentile([2.5, 3.0] + [5.0] * 8, 10))
    assert any("anisotropic" in n for n in p.notes)


def test_ct_gets_one_dataset_window_mr_a_per_image_zscore() -> None:
    ct = make_plan(_fp((64, 64, 32), (1.0, 1.0, 1.0), "CT", pct=(-120.0, 280.0)))
    assert ct.intensity is not None and ct.intensity["kind"] == "range"
    assert (ct.intensity["a_min"], ct.intensity["a_max"]) == (-120.0, 280.0)
    assert ct.intensity["b_min"] == pytest.approx((-120.0 - 50.0) / 20.0)
    assert make_plan(_fp((64, 64, 32), (1.0, 1.0, 1.0), "MR")).intensity is None


def test_fingerprint_of_arrays() -> None:
    rng = np.random.default_rng(0)
    items = []
    for n in range(3):
        img = rng.normal(0, 1, (20, 24, 16 + n)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[5:10, 5:10, 5:10] = 1
        img[lab == 1] += 100.0
        items.append((img, (1.0, 1.0, 2.0), lab))
    fp = fingerprint_arrays(items, modality="mr")
    assert fp.cases == 3 and fp.modality == "MR" and fp.median_shape == (20, 24, 17)
    assert fp.class_voxels == {1: 125.0} and fp.foreground_mean is not None and fp.foreground_mean > 90
    with pytest.raises(ValueError, match="empty"):
        fingerprint_arrays([])
    with pytest.raises(ValueError, match="channel"):
        fingerprint_arrays([(np.zeros((4, 4, 4)), (1, 1, 1), None), (np.zeros((4, 4, 4, 2)), (1, 1, 1), None)])


def test_an_anisotropic_patch_is_as_long_in_mm_on_every_axis() -> None:
    """5 mm slices, 0.8 mm in plane: the slice axis gets few voxels but as many millimetres as the
    others (a patch shaped like the image gave it the divisor, 8 slices, 40 mm against 134)."""
    patch, capped = patch_for((512, 512, 48), (0.8, 0.8, 5.0), 8, CPU_PATCH_VOXELS)
    assert capped and patch == (128, 128, 16)
    mm = [p * s for p, s in zip(patch, (0.8, 0.8, 5.0), strict=True)]
    assert max(mm) / min(mm) < 1.5
    # an axis the image is too short for gives its share of the budget to the others
    patch, _ = patch_for((16, 400, 400), (1.0, 1.0, 1.0), 16, CPU_PATCH_VOXELS)
    assert patch == (16, 128, 128)


def test_a_coarse_slice_axis_is_pooled_only_once_the_others_reach_its_spacing() -> None:
    """nnU-Net's rule: 4 mm under 0.8 mm in plane is halved at the third level only (the others are
    3.2 mm by then). The plan uses it on a GPU, with a patch budget cut by what the unpooled levels
    cost; on a CPU (2.4x a whole-volume pass, no gain measured) it only says what it would choose.
    An isotropic grid pools every axis and its network config stays as it was."""
    assert pooling_strides((0.8, 0.8, 4.0), 3) == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert pooling_strides((1.0, 1.0, 1.0), 3) == [[2, 2, 2]] * 3
    assert pooling_strides((3.0, 0.7, 0.7), 2) == [[1, 2, 2], [1, 2, 2]]
    fp = _fp((512, 512, 60), (0.8, 0.8, 4.0), "CT", pct=(-100.0, 200.0))
    gpu = make_plan(fp, device="cuda")
    assert gpu.network["strides"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    assert size_divisor(gpu.network) == (8, 8, 2) and pooling_cost(gpu.network) == pytest.approx(896 / 480)
    assert all(p % d == 0 for p, d in zip(gpu.patch_size, (8, 8, 2), strict=True)) and gpu.patch_size[2] % 8 != 0
    assert np.prod(gpu.patch_size) <= GPU_PATCH_VOXELS * 480 / 896 and any("not pooled" in n for n in gpu.notes)
    cpu = make_plan(fp)
    assert "strides" not in cpu.network and size_divisor(cpu.network) == (8, 8, 8)
    assert any("every axis is pooled on cpu" in n for n in cpu.notes)
    iso = make_plan(_fp((256, 256, 160), (1.0, 1.0, 1.0)), device="cuda")
    assert "strides" not in iso.network and size_divisor(iso.network) == (8, 8, 8)
    assert not any("pool" in n for n in iso.notes)
    # a grid the user chose: the plan's pooling and patch follow it
    chosen = make_plan(_fp((256, 256, 160), (1.0, 1.0, 1.0)), spacing=(1.0, 1.0, 3.0), device="cuda")
    assert chosen.spacing == (1.0, 1.0, 3.0) and chosen.network["strides"] == [[2, 2, 1], [2, 2, 2], [2, 2, 2]]
    assert chosen.resampled_median_shape == (256, 256, 53) and any("as configured" in n for n in chosen.notes)
    given = make_plan(fp, network={"strides": [2, 2, [2, 2, 1]]})  # the user's, on any device
    assert given.network["strides"] == [[2, 2, 2], [2, 2, 2], [2, 2, 1]] and size_divisor(given.network) == (8, 8, 4)
    # the network the plan describes takes the planned patch
    import torch

    from segloop.ml.networks import build_network

    net = build_network({**gpu.network, "channels": [4, 8, 8, 8], "num_res_units": 0}, 2, 2)
    assert net(torch.zeros(1, 2, 16, 16, 6)).shape == (1, 2, 16, 16, 6)
    with pytest.raises(ValueError, match="each stride must be 1 or 2"):
        make_plan(_fp((64, 64, 64), (1.0, 1.0, 1.0)), network={"strides": [[2, 2, 3], 2, 2]})
    with pytest.raises(ValueError, match="per downsampling level"):
        make_plan(_fp((64, 64, 64), (1.0, 1.0, 1.0)), network={"strides": [2, 2]})


def test_patch_for_with_a_divisor_per_axis() -> None:
    patch, capped = patch_for((512, 512, 60), (0.83, 0.83, 4.0), (8, 8, 2), CPU_PATCH_VOXELS)
    assert capped and patch[0] % 8 == 0 and patch[1] % 8 == 0 and patch[2] % 2 == 0
    assert np.prod(patch) <= CPU_PATCH_VOXELS and np.prod(patch) > 0.9 * CPU_PATCH_VOXELS
    assert patch_for((35, 50, 37), (1.0, 1.0, 2.0), (8, 8, 2), CPU_PATCH_VOXELS) == ((40, 56, 38), False)


def test_patch_for_never_exceeds_the_budget() -> None:
    for shape in ((300, 300, 300), (512, 512, 20), (16, 400, 400)):
        patch, capped = patch_for(shape, (1.0, 1.0, 1.0), 16, 100_000)
        assert capped and np.prod(patch) <= 100_000 and all(v % 16 == 0 and v >= 16 for v in patch)


def test_calibration_measures_seconds_per_step() -> None:
    p = make_plan(_fp((16, 16, 16), (1.0, 1.0, 1.0)), network={"channels": [4, 8], "num_res_units": 0})
    c = calibrate(p, image_channels=1, num_classes=2, steps=1, threads=1)
    assert c.seconds_per_step is not None and c.seconds_per_step > 0
    assert c.steps_for_minutes(1.0) == max(1, int(60 / c.seconds_per_step))
    assert "steps/min" in c.describe()


def test_a_ct_model_trained_from_scratch_carries_its_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from segloop.imaging.volume import Volume
    from segloop.ml.training import train
    from segloop.store.local import open_datastore
    from segloop.store.records import LabelClass, LabelSchema
    from tests.unit.test_ml_end_to_end import tiny_config

    store = open_datastore(tmp_path / "d")
    store.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "organ"))))
    rng = np.random.default_rng(0)
    for n in range(3):
        img = rng.normal(-800, 50, (20, 28, 20)).astype(np.float32)  # air-like HU
        lab = np.zeros(img.shape, np.uint8)
        lab[6:14, 8:20, 6:14] = 1
        img[lab == 1] = rng.normal(60, 20, int(lab.sum()))
        store.add_image(Volume(img, np.eye(4), metadata={"modality": "CT"}), f"ct{n}", "test")
        store.save_label(f"ct{n}", lab, author="t", status="final")
    v = train(store, "ct", tiny_config(epochs=1, steps_per_epoch=1, val_split=0.0, patch_size=None), device="cpu")
    assert v.metrics["plan"]["patch_size"] == [20, 28, 20] and store.get_image("ct0").modality == "CT"
    assert v.config["intensity"]["kind"] == "range" and v.config["intensity"]["a_min"] > -200
    # the window is applied at inference too: the model's input for an organ voxel is the same
    from segloop.ml.predictor import Predictor

    pred = Predictor.load(store, "ct", device="cpu")
    assert pred.spec.intensity == v.config["intensity"]


def test_a_structure_that_fills_the_patch_gets_nnunets_foreground_rate() -> None:
    """Capped patch and a class of 91 % of it: 1 in 3 patches on foreground; small ones keep 2 in 3."""
    big = Fingerprint(10, "CT", 1, ((512, 512, 48),) * 10, ((0.83, 0.83, 5.0),) * 10, (0.0, 100.0), 50.0, 20.0,
                      {1: 237_000.0, 2: 2_400.0})
    p = make_plan(big)
    assert p.fg_ratio == FG_RATIO_LARGE and p.train_overrides()["fg_ratio"] == FG_RATIO_LARGE
    assert any("large structure (class 1" in n for n in p.notes) and "33% of patches" in p.describe()
    thin = Fingerprint(10, "MR", 1, ((256, 256, 160),) * 10, ((1.0, 1.0, 1.0),) * 10, None, None, None,
                       {1: 4_000.0, 2: 20_000.0})
    assert make_plan(thin).fg_ratio == FG_RATIO_SMALL
    # the patch covers the image: where patches are centred hardly matters, the rate stays
    whole = Fingerprint(10, "MR", 1, ((35, 50, 36),) * 10, ((1.0, 1.0, 1.0),) * 10, None, None, None, {1: 30_000.0})
    assert make_plan(whole).fg_ratio == FG_RATIO_SMALL


def test_training_records_the_foreground_rate_it_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``fg_ratio`` None takes the plan's and the version records it; a fine-tune keeps its
    version's; a given one is used as given."""
    from segloop.imaging.volume import Volume
    from segloop.ml.training import train
    from segloop.store.local import open_datastore
    from segloop.store.records import LabelClass, LabelSchema
    from tests.unit.test_ml_end_to_end import tiny_config

    store = open_datastore(tmp_path / "d")
    store.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "blob"))))
    rng = np.random.default_rng(0)
    for n in range(2):
        img = rng.normal(0, 1, (16, 16, 16)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[4:10, 4:10, 4:10] = 1
        store.add_image(Volume(img, np.eye(4)), f"i{n}", "test")
        store.save_label(f"i{n}", lab, author="t", status="final")
    v1 = train(store, "m", tiny_config(epochs=1, steps_per_epoch=1, val_split=0.0, fg_ratio=None), device="cpu")
    assert v1.config["train"]["fg_ratio"] == v1.metrics["plan"]["fg_ratio"] == FG_RATIO_SMALL
    v2 = train(store, "m", tiny_config(epochs=1, steps_per_epoch=1, val_split=0.0, fg_ratio=0.2), device="cpu",
               fine_tune=v1.version)
    assert v2.config["train"]["fg_ratio"] == 0.2
    v3 = train(store, "m", tiny_config(epochs=1, steps_per_epoch=1, val_split=0.0, fg_ratio=None), device="cpu",
               fine_tune=v2.version)
    assert v3.config["train"]["fg_ratio"] == 0.2


def test_a_model_of_thick_slices_keeps_its_pooling_and_blob_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Trained from scratch on 1 x 1 x 4 mm images with nnU-Net's pooling and a click blob per axis:
    the version's config holds both, a reload rebuilds the same network, and a click's pass runs on a patch
    whose slice count is not a multiple of 8."""
    from segloop.imaging.volume import Volume
    from segloop.ml.clicks import Click
    from segloop.ml.predictor import Predictor
    from segloop.ml.training import train
    from segloop.store.local import open_datastore
    from segloop.store.records import LabelClass, LabelSchema
    from tests.unit.test_ml_end_to_end import tiny_config

    store = open_datastore(tmp_path / "d")
    store.set_schema(LabelSchema((LabelClass(0, "background", (0, 0, 0)), LabelClass(1, "organ"))))
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    for n in range(2):
        img = rng.normal(0, 1, (32, 32, 6)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[10:22, 8:20, 1:5] = 1
        img[lab == 1] += 3.0
        store.add_image(Volume(img, affine), f"i{n}", "test")
        store.save_label(f"i{n}", lab, author="t", status="final")
    net = {"channels": [4, 8, 8], "num_res_units": 0, "strides": [[2, 2, 1], [2, 2, 1]]}  # as the GPU plan would
    cfg = tiny_config(epochs=1, steps_per_epoch=1, val_split=0.0, patch_size=None, network=net, guidance_sigma=[3, 3, 0.75])
    v = train(store, "thick", cfg, device="cpu")
    assert v.config["network"]["strides"] == [[2, 2, 1], [2, 2, 1]]
    assert v.config["guidance_sigma"] == pytest.approx([3.0, 3.0, 0.75])
    assert v.config["patch_size"] == [32, 32, 6]  # 6 slices: a multiple of 1, not of 4
    pred = Predictor.load(store, "thick", device="cpu")
    assert pred.spec.guidance_sigma == pytest.approx((3.0, 3.0, 0.75))
    session = pred.session(store.load_image("i0"))
    after = session.add_clicks([Click(1, (16, 14, 3))])
    assert after.label.array.shape == (32, 32, 6) and after.label.array[16, 14, 3] == 1


def test_structure_size_measures_extent_and_thickness_in_mm() -> None:
    sheet = np.zeros((40, 40, 20), bool)
    sheet[5:35, 10:30, 8:10] = True  # two 1.5 mm voxels thick
    ext, th = structure_size(sheet, (1.0, 1.0, 1.5))
    assert ext == (30.0, 20.0, 3.0) and th == pytest.approx(3.0)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    ball = (xx - 20) ** 2 + (yy - 20) ** 2 + (zz - 20) ** 2 <= 10 ** 2
    ext, th = structure_size(ball, (0.5, 0.5, 0.5))
    assert ext == (10.5, 10.5, 10.5) and th == pytest.approx(10.0, abs=0.6)  # diameter 2 x 10 x 0.5 mm
    assert structure_size(ball, (1.0, 1.0, 1.0), thickness=False)[1] is None


def test_fingerprint_records_each_class_extent_and_thickness() -> None:
    items = []
    for n in range(3):
        lab = np.zeros((30, 30, 20), np.uint8)
        lab[2:22 + n, 4:10 + 4 * n, 3:13] = 1  # slabs 6, 10 and 14 voxels wide, 20 mm deep
        lab[25:27, 5:25, 5:15] = 2  # a sheet 2 voxels thick
        items.append((np.zeros(lab.shape, np.float32), (1.0, 1.0, 2.0), lab))
    fp = fingerprint_arrays(items)
    assert fp.class_extent_mm == {1: (21.0, 10.0, 20.0), 2: (2.0, 20.0, 20.0)}
    # thickness: the lower quartile over the cases (6, 10, 14 mm -> 8), so most cases are thicker
    assert fp.class_thickness_mm[1] == pytest.approx(8.0) and fp.class_thickness_mm[2] == pytest.approx(2.0)
    assert fp.to_dict()["class_thickness_mm"] == {"1": fp.class_thickness_mm[1], "2": 2.0}


def _ct_like(thin_mm: float) -> Fingerprint:
    """A 513x513x60 CT at 0.83x0.83x4 mm: an organ of ~130 mm, and a second class ``thin_mm`` thick."""
    return Fingerprint(10, "CT", 1, ((513, 513, 60),) * 10, ((0.83, 0.83, 4.0),) * 10, (0.0, 100.0), 50.0, 20.0,
                       {1: 237_000.0, 2: 2_400.0}, {1: (132.0, 121.0, 134.0), 2: (26.0, 27.0, 25.0)},
                       {1: 67.0, 2: thin_mm})


def test_a_patch_that_cannot_see_the_largest_structure_gets_a_coarser_grid() -> None:
    """nnU-Net's low-resolution idea, decided by the structures: the in-plane spacing grows until the
    CPU patch holds the organ, the 4 mm slice axis stays, the lesion keeps enough voxels across."""
    fp = _ct_like(30.0)
    p = make_plan(fp)
    assert p.spacing[2] == 4.0 and p.spacing[0] == p.spacing[1] and 1.2 < p.spacing[0] <= 30.0 / MIN_VOXELS_ACROSS
    fov = np.array(p.patch_size) * np.array(p.spacing)
    assert np.all(fov >= (132.0, 121.0, 134.0))  # the organ's median box fits in one patch
    assert np.prod(p.patch_size) <= CPU_PATCH_VOXELS
    assert any(n.startswith("coarser grid") and "holds the largest" in n for n in p.notes)
    assert p.train_overrides()["spacing"] == list(p.spacing)
    same, note = context_spacing(fp, (0.83, 0.83, 4.0), 8, CPU_PATCH_VOXELS)
    assert same == p.spacing and note is not None
    # a 16.6 mm lesion stops the grid earlier: 12 voxels across it; the patch sees most of the organ
    lesion = make_plan(_ct_like(16.6))
    assert 1.0 < lesion.spacing[0] <= 16.6 / MIN_VOXELS_ACROSS < 16.6 / MIN_VOXELS_ACROSS * 1.03 < p.spacing[0]
    assert any("as coarse as the thinnest structure (class 2, 16.6 mm thick)" in n for n in lesion.notes)
    assert np.prod(lesion.patch_size) * np.prod(lesion.spacing) > 1.5 * 86 * 86 * 96  # was 86x86x96 mm


def test_a_thin_structure_or_a_patch_that_already_sees_keeps_the_grid() -> None:
    thin = make_plan(_ct_like(3.0))  # 3 mm thick: 8 voxels across need 0.375 mm, finer than the data
    assert thin.spacing == (0.83, 0.83, 4.0) and any("the grid stays" in n for n in thin.notes)
    # the GPU's patch holds the organ already; small images fit whole; a configured grid is used as given
    assert make_plan(_ct_like(16.6), device="cuda").spacing == (0.83, 0.83, 4.0)
    assert make_plan(_fp((35, 50, 36), (1.0, 1.0, 1.0))).spacing == (1.0, 1.0, 1.0)
    assert make_plan(_ct_like(16.6), spacing=(0.83, 0.83, 4.0)).spacing == (0.83, 0.83, 4.0)
    # no labels, no structure sizes: nothing to decide by
    bare = Fingerprint(10, "CT", 1, ((513, 513, 60),) * 10, ((0.83, 0.83, 4.0),) * 10, None, None, None)
    assert make_plan(bare).spacing == (0.83, 0.83, 4.0)
