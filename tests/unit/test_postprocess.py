"""Keep-the-largest-component post-processing: the decision from training labels and its effect."""

from __future__ import annotations

import numpy as np
import pytest

from segloop.ml.postprocess import FOREGROUND, check_rule, decide_keep_largest, keep_largest, largest_share

SHAPE = (30, 30, 20)


def _ball(centre: tuple[int, int, int], radius: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_largest_share() -> None:
    assert largest_share(np.zeros(SHAPE, bool)) is None
    assert largest_share(_ball((10, 10, 10), 4)) == 1.0
    two = _ball((8, 8, 8), 4) | _ball((22, 22, 12), 4)
    assert largest_share(two) == pytest.approx(0.5)
    # corner neighbours are connected (26-connectivity, as nnU-Net)
    diagonal = np.zeros(SHAPE, bool)
    diagonal[5, 5, 5] = diagonal[6, 6, 6] = True
    assert largest_share(diagonal) == 1.0


def test_decide_from_labels() -> None:
    organ = np.zeros(SHAPE, np.uint8)
    organ[_ball((15, 15, 10), 7)] = 1
    with_lesions = organ.copy()
    with_lesions[_ball((12, 15, 10), 2)] = 2
    with_lesions[_ball((18, 15, 10), 2)] = 2  # two lesions inside the organ: class 2 is not one piece
    assert decide_keep_largest([organ, with_lesions], [1, 2]) == (FOREGROUND, 1)
    # a structure in two pieces in one label of three is left alone; so is the foreground
    apart = np.zeros(SHAPE, np.uint8)
    apart[_ball((6, 6, 6), 3)] = 1
    apart[_ball((24, 24, 14), 3)] = 1
    assert decide_keep_largest([organ, apart, organ], [1, 2]) == ()
    # a speck of under 5 % beside the structure still makes it one piece
    speck = organ.copy()
    speck[1, 1, 1] = 1
    assert decide_keep_largest([speck], [1]) == (FOREGROUND, 1)
    assert decide_keep_largest([speck], [1], min_share=1.0) == ()
    # a class in no label gets no rule; no labels, no rule
    assert decide_keep_largest([organ], [1, 2]) == (FOREGROUND, 1)
    assert decide_keep_largest([], [1]) == ()


def test_keep_largest_removes_stray_pieces_only_where_the_rule_says() -> None:
    label = np.zeros(SHAPE, np.uint8)
    label[_ball((15, 15, 10), 6)] = 1
    label[_ball((3, 3, 3), 2)] = 1  # a stray blob of class 1
    label[_ball((26, 26, 16), 2)] = 2  # a piece of class 2 apart from everything
    out, dropped = keep_largest(label, (1,))
    assert dropped is not None and dropped.sum() == (_ball((3, 3, 3), 2)).sum()
    assert (out[_ball((3, 3, 3), 2)] == 0).all() and (out == 2).sum() == (label == 2).sum()
    assert (label[_ball((3, 3, 3), 2)] == 1).all()  # the input is not changed
    # the foreground rule removes every piece apart from the largest, whatever its class
    out, dropped = keep_largest(label, (FOREGROUND,))
    assert dropped is not None and set(np.unique(out)) == {0, 1} and (out == 1).sum() == _ball((15, 15, 10), 6).sum()
    # nothing to remove: the same array back
    clean = np.where(out == 1, 1, 0).astype(np.uint8)
    same, none = keep_largest(clean, (FOREGROUND, 1, 2))
    assert same is clean and none is None
    assert keep_largest(label, ())[0] is label


def test_check_rule() -> None:
    assert check_rule([0, 2, 2], [1, 2]) == (0, 2)
    with pytest.raises(ValueError, match="not classes of the model"):
        check_rule([3], [1, 2])
    with pytest.raises(ValueError, match="list of class values"):
        check_rule("yes", [1, 2])


def test_predictor_postprocess_keeps_probabilities_and_label_in_step() -> None:
    import torch

    from segloop.ml.modelspec import ModelSpec
    from segloop.ml.predictor import Predictor

    spec = ModelSpec({"arch": "unet", "channels": [8, 16], "num_res_units": 1}, [0, 1], ["background", "organ"], 1,
                     (16, 16, 16), None, keep_largest=(1,))
    assert ModelSpec.from_config(spec.to_config()).keep_largest == (1,)
    with pytest.raises(ValueError, match="not classes of the model"):
        ModelSpec.from_config({**spec.to_config(), "keep_largest": [5]})
    predictor = Predictor(spec.build(), spec, "m", 1, torch.device("cpu"))
    probs = np.zeros((2, *SHAPE), np.float32)
    probs[0] = 0.8
    probs[1][_ball((15, 15, 10), 6) | _ball((3, 3, 3), 2)] = 0.9
    label = predictor.postprocess(probs)
    assert (label[_ball((3, 3, 3), 2)] == 0).all() and (label == 1).sum() == _ball((15, 15, 10), 6).sum()
    assert np.array_equal(predictor.labels_from(probs), label)  # the removed blob is certain background now


def test_train_config_keep_largest() -> None:
    from segloop.ml.train_config import TrainConfig

    assert TrainConfig().keep_largest == "auto"
    assert TrainConfig.from_dict({"keep_largest": []}).keep_largest == []
    with pytest.raises(ValueError, match="keep_largest"):
        TrainConfig.from_dict({"keep_largest": "always"})
    with pytest.raises(ValueError, match="keep_largest"):
        TrainConfig.from_dict({"keep_largest": [-1]})


def test_fingerprint_says_what_is_one_piece() -> None:
    from segloop.ml.fingerprint import fingerprint_arrays

    organ = np.zeros(SHAPE, np.uint8)
    organ[_ball((15, 15, 10), 7)] = 1
    organ[_ball((12, 15, 10), 2)] = 2
    two = organ.copy()
    two[_ball((18, 15, 10), 2)] = 2  # a second lesion
    image = np.zeros(SHAPE, np.float32)
    fp = fingerprint_arrays([(image, (1.0, 1.0, 2.0), organ), (image, (1.0, 1.0, 2.0), two)])
    assert fp.largest_share[FOREGROUND] == 1.0 and fp.largest_share[1] == 1.0
    assert fp.largest_share[2] == pytest.approx(0.5)
    assert fp.keep_largest == (FOREGROUND, 1) == decide_keep_largest([organ, two], [1, 2])
    assert fp.to_dict()["keep_largest"] == [0, 1]


def test_new_stray_pieces_of_an_interactive_step() -> None:
    from segloop.ml.postprocess import new_stray_pieces

    box = (20, 20, 12)
    before = np.zeros(box, np.uint8)
    before[_ball((10, 10, 6), 3, box)] = 1  # the structure, already there
    after = before.copy()
    after[_ball((10, 10, 8), 3, box)] = 1  # the step grew it: overlaps what was there
    after[_ball((3, 3, 3), 1.5, box)] = 1  # a new blob inside the box: dropped
    after[_ball((16, 4, 6), 1.5, box)] = 1  # a new blob with a positive click: kept
    after[19, 10, 6] = after[18, 10, 6] = 1  # a new blob on an open face: may go on outside, kept
    closed = [(False, False)] * 3
    drop = new_stray_pieces(after, before, (1,), [(False, True), (False, False), (False, False)], lambda v: 0,
                            {1: [(16, 4, 6)]})
    assert drop is not None and np.array_equal(drop, _ball((3, 3, 3), 1.5, box))
    # the same blob on a closed face (the volume's edge) is dropped too
    drop = new_stray_pieces(after, before, (1,), closed, lambda v: 0, {1: [(16, 4, 6)]})
    assert drop is not None and drop[19, 10, 6] and drop[18, 10, 6] and not drop[16, 4, 6]
    # a class outside the rule keeps every piece; so does the larger part of the structure
    assert new_stray_pieces(after, before, (2,), closed, lambda v: 0, {}) is None
    empty = np.zeros(box, np.uint8)
    lone = np.zeros(box, np.uint8)
    lone[_ball((5, 5, 5), 2, box)] = 1
    assert new_stray_pieces(lone, empty, (1,), closed, lambda v: 10, {}) is None  # 33 voxels against 10 outside
    dropped = new_stray_pieces(lone, empty, (FOREGROUND,), closed, lambda v: 1000, {})
    assert dropped is not None and dropped.sum() == (lone == 1).sum()


def test_label_shares_and_the_rule_from_them() -> None:
    from segloop.ml.postprocess import decide_from_shares, label_shares

    label = np.zeros(SHAPE, np.uint8)
    label[_ball((15, 15, 10), 7)] = 1
    label[_ball((12, 15, 10), 2)] = 2
    label[_ball((18, 15, 10), 2)] = 2
    assert label_shares(label, [1, 2, 3]) == {FOREGROUND: 1.0, 1: 1.0, 2: pytest.approx(0.5)}
    assert label_shares(np.zeros(SHAPE, np.uint8), [1]) == {}
    assert decide_from_shares([{0: 1.0, 1: 1.0, 2: 0.5}, {0: 0.96, 1: 1.0}]) == (FOREGROUND, 1)
    assert decide_from_shares([{0: 1.0, 1: 1.0}, {0: 0.9}]) == (1,)


def test_validation_confirms_or_drops_each_entry() -> None:
    from segloop.ml.postprocess import confirm_on_validation

    ref = np.zeros(SHAPE, np.uint8)
    ref[_ball((10, 10, 10), 4)] = 1
    stray = ref.copy()
    stray[_ball((24, 24, 10), 2)] = 1  # a false blob, smaller than the structure: the rule helps
    kept, dice = confirm_on_validation([stray], [ref], (FOREGROUND, 1), [1])
    assert kept == (FOREGROUND, 1) and dice[0] == pytest.approx(1.0)
    # the model finds the structure only in part and a larger false blob beside it: the rule would keep
    # the wrong piece, so validation drops both entries (each alone still removes the right one)
    wrong = np.zeros(SHAPE, np.uint8)
    wrong[_ball((10, 10, 10), 3)] = 1
    wrong[_ball((23, 23, 10), 5)] = 1
    kept, dice = confirm_on_validation([wrong], [ref], (FOREGROUND, 1), [1])
    assert kept == ()
    assert dice[0] == pytest.approx(2 * _ball((10, 10, 10), 3).sum() / (ref.sum() + (wrong == 1).sum()))
    # a tie keeps the entry (nothing to remove)
    assert confirm_on_validation([ref], [ref], (1,), [1])[0] == (1,)
