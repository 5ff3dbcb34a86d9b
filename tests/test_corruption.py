from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.corruption import mask_ops
from nnunet_noisylabels.corruption import noise as C


def disk2d(shape=(64, 64), centre=(32, 30), r=14):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < r ** 2


def ball3d(shape=(24, 32, 32), centre=(12, 16, 16), r=8):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < r ** 2


def two_blobs():
    m = disk2d(r=10, centre=(20, 20))
    m |= disk2d(r=6, centre=(48, 48))
    return m


MASKS = {"2d": disk2d, "3d": ball3d}


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_erosion_only_removes_dilation_only_adds(dim):
    m = MASKS[dim]()
    e, pe = C.erode_mask(m, np.random.default_rng(0), radius=2)
    d, pd = C.dilate_mask(m, np.random.default_rng(0), radius=2)
    assert not (e & ~m).any() and (m & ~e).any()
    assert not (m & ~d).any() and (d & ~m).any()
    assert pe == {"radius": 2.0} and pd == {"radius": 2.0}


def test_dilation_erosion_golden_radius():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    d, _ = C.dilate_mask(m, np.random.default_rng(0), radius=3)
    assert d.sum() == len(mask_ops._ball_offsets(3, 2)) == 29  # Euclidean disk of radius 3
    sq = np.zeros((20, 20), bool)
    sq[5:15, 5:15] = True
    e, _ = C.erode_mask(sq, np.random.default_rng(0), radius=2)
    assert e.sum() == 36 and e[7:13, 7:13].all()  # 2 pixels peeled from each side
    # a mask touching the image border is not eroded from the border
    edge = np.zeros((10, 10), bool)
    edge[:, :5] = True
    e2, _ = C.erode_mask(edge, np.random.default_rng(0), radius=1)
    assert e2[:, :4].all() and not e2[:, 4].any()


@pytest.mark.parametrize("noise", C.BETA_TYPES)
@pytest.mark.parametrize("beta", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_beta_is_hit(noise, beta, dim):
    m = MASKS[dim]()
    out, _ = C.NOISE_FUNCTIONS[noise](m, np.random.default_rng(3), beta=beta)
    tol = 0.002 if noise in ("dilate", "erode") else 0.06  # morphology flips an exact pixel count
    assert C.changed_ratio(m, out) == pytest.approx(beta, abs=tol)
    if noise == "dilate":
        assert not (m & ~out).any()
    if noise == "erode":
        assert not (out & ~m).any()


def test_beta_dice_relation_for_dilation():
    # dilation by ratio beta gives Dice 2 / (2 + beta)
    m = disk2d(shape=(128, 128), centre=(64, 64), r=30)
    out, _ = C.dilate_mask(m, np.random.default_rng(0), beta=0.5)
    assert dice(m, out) == pytest.approx(2 / 2.5, abs=0.01)


def test_affine_keeps_shape_size_and_moves():
    m = disk2d(shape=(96, 96), centre=(48, 48), r=12)
    out, p = C.affine_mask(m, np.random.default_rng(0), max_rotation=0, max_shift=0.5)
    assert p["rotation_deg"] == 0.0
    assert abs(int(out.sum()) - int(m.sum())) <= 0.05 * m.sum()
    com_shift = np.array(ndimage.center_of_mass(out)) - np.array(ndimage.center_of_mass(m))
    np.testing.assert_allclose(com_shift, p["shift_vox"], atol=0.6)


def test_box_covers_components_and_margin():
    m = two_blobs()
    box, info = C.box_mask(m, np.random.default_rng(0))
    assert info["n_components"] == 2
    assert not (m & ~box).any()
    lab, _ = ndimage.label(m)
    for sl in ndimage.find_objects(lab):
        assert box[sl].all()
    assert box.sum() == sum(np.prod([s.stop - s.start for s in sl]) for sl in ndimage.find_objects(lab))
    boxm, _ = C.box_mask(m, np.random.default_rng(0), margin=2)
    assert not (box & ~boxm).any()
    assert boxm.sum() == (19 + 4) ** 2 + (11 + 4) ** 2
    b3, _ = C.box_mask(ball3d(), np.random.default_rng(0))
    assert b3.sum() == 15 ** 3 and not (ball3d() & ~b3).any()


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_scribble_inside_structure(dim):
    m = MASKS[dim]() if dim == "3d" else two_blobs()
    s, info = C.scribble_mask(m, np.random.default_rng(0), width=1, erode=1)
    assert s.any() and not (s & ~m).any()
    assert s.sum() < 0.5 * m.sum()
    lab, n = ndimage.label(m, ndimage.generate_binary_structure(m.ndim, m.ndim))
    for i in range(1, n + 1):  # every component gets a scribble
        assert (s & (lab == i)).any()
    part, _ = C.scribble_mask(m, np.random.default_rng(0), width=0, fraction=0.3)
    full, _ = C.scribble_mask(m, np.random.default_rng(0), width=0, fraction=1.0)
    assert 0 < part.sum() < full.sum() and not (part & ~full).any()


def test_drop_components():
    m = two_blobs()
    out, info = C.drop_components_mask(m, np.random.default_rng(0), p=0.5)
    assert info == {"n_components": 2, "n_dropped": 1}
    assert not (out & ~m).any()
    lab, _ = ndimage.label(out)
    assert lab.max() == 1
    kept = out.sum()
    assert kept in (m[:34, :34].sum(), m[34:, 34:].sum())
    # p=1 with keep_one still keeps one; without, everything goes
    out1, info1 = C.drop_components_mask(m, np.random.default_rng(0), p=1.0)
    assert info1["n_dropped"] == 1 and out1.any()
    out0, _ = C.drop_components_mask(m, np.random.default_rng(0), p=1.0, keep_one=False)
    assert not out0.any()


def test_edge_noise_changes_only_near_boundary():
    m = disk2d(shape=(96, 96), centre=(48, 48), r=25)
    out, info = C.edge_noise_mask(m, np.random.default_rng(0), fraction=0.1, radius=(3, 5))
    assert info["n_added"] > 0 and info["n_removed"] > 0
    changed = out ^ m
    assert changed.any()
    dist_to_boundary = ndimage.distance_transform_edt(~mask_ops._inner_boundary(m))
    assert dist_to_boundary[changed].max() <= 5 + 1e-6
    add_only, _ = C.edge_noise_mask(m, np.random.default_rng(0), p_add=1.0, radius=3)
    assert not (m & ~add_only).any() and (add_only & ~m).any()


def test_markov_preference_direction():
    m = disk2d(shape=(96, 96), centre=(48, 48), r=20)
    grow, _ = C.markov_mask(m, np.random.default_rng(0), T=100, theta1=0.9, theta2=0.1, theta3=0.0, sigma=0)
    shrink, _ = C.markov_mask(m, np.random.default_rng(0), T=100, theta1=0.1, theta2=0.1, theta3=0.0, sigma=0)
    assert grow.sum() > 1.2 * m.sum()
    assert shrink.sum() < 0.8 * m.sum()
    # theta2=0: no boundary change; theta3 flips are smoothed away by blur+threshold away from the boundary
    same, _ = C.markov_mask(m, np.random.default_rng(0), T=50, theta1=0.5, theta2=0.0, theta3=0.2, sigma=2.0)
    far = ndimage.distance_transform_edt(~mask_ops._inner_boundary(m)) > 3
    assert (same == m)[far].mean() > 0.995


@pytest.mark.parametrize("noise", list(C.NOISE_FUNCTIONS))
@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_determinism_and_seed_sensitivity(noise, dim):
    m = MASKS[dim]()
    a, pa = C.NOISE_FUNCTIONS[noise](m, np.random.default_rng(7))
    b, pb = C.NOISE_FUNCTIONS[noise](m, np.random.default_rng(7))
    assert np.array_equal(a, b) and pa == pb
    assert a.shape == m.shape and a.dtype == bool


@pytest.mark.parametrize("noise", ["dilate", "affine", "elastic", "edge", "markov"])
def test_different_seeds_differ(noise):
    m = disk2d()
    outs = [C.NOISE_FUNCTIONS[noise](m, np.random.default_rng(s))[0] for s in range(3)]
    assert not (np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2]))


def multiclass_seg():
    seg = np.zeros((64, 64), np.int16)
    seg[disk2d(r=20)] = 1
    seg[disk2d(r=8)] = 2
    seg[5:15, 45:60] = 3
    return seg


def test_label_map_dilation_no_overlap_and_priority():
    seg = multiclass_seg()
    out, info = C.corrupt_label_map(seg, "dilate", 0, radius=3)
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    # original pixels keep their class when the class still claims them
    for c in (1, 2, 3):
        assert (out[seg == c] == c).all()
    # background claimed by dilation got a label; class 2 dilated into class 1 did not steal it
    assert ((out != 0) & (seg == 0)).any()
    assert info["noise"] == "dilate" and set(info["classes"]) == {1, 2, 3}


def test_label_map_erosion_and_protected_labels():
    seg = multiclass_seg()
    out, info = C.corrupt_label_map(seg, "erode", 0, labels=[1, 2], radius=2)
    assert np.array_equal(out == 3, seg == 3)  # label 3 not corrupted
    for c in (1, 2):
        assert not ((out == c) & (seg != c)).any()
        assert (out == c).sum() < (seg == c).sum()


def test_label_map_box_multiclass_overlap_rule():
    seg = np.zeros((40, 40), np.int16)
    seg[5:25, 5:25] = 1
    seg[20:30, 20:30] = 2  # overlaps the bbox of class 1 in the corner
    seg[5:25, 5:25][np.indices((20, 20)).sum(0) > 30] = 0  # cut class 1's corner: a triangle
    out, _ = C.corrupt_label_map(seg, "box", 0)
    assert (out[seg == 1] == 1).all() and (out[seg == 2] == 2).all()
    assert (out[20:30, 20:30] == 2).all()
    assert seg[24, 19] == 0 and out[24, 19] == 1  # cut corner of class 1 refilled by its box
    assert seg[22, 22] == 0  # claimed by both boxes, not an original pixel of either: highest label wins


def test_label_map_empty_class_and_determinism_3d():
    seg = np.zeros((16, 24, 24), np.uint8)
    seg[ball3d((16, 24, 24), (8, 12, 12), 6)] = 1
    out1, info1 = C.corrupt_label_map(seg, "markov", 5, labels=[1, 2], T=20)
    out2, info2 = C.corrupt_label_map(seg, "markov", 5, labels=[1, 2], T=20)
    assert np.array_equal(out1, out2) and info1 == info2
    assert info1["classes"][2] == {"empty": True}
    assert out1.dtype == np.uint8
    empty, info = C.corrupt_label_map(np.zeros((8, 8), np.uint8), "dilate", 0)
    assert not empty.any() and info["classes"] == {}


def test_mixture_and_alpha_beta():
    seg = multiclass_seg()
    picked = {C.corrupt_label_map(seg, "mixture", s, mixture={"dilate": 1, "box": 1})[1]["noise"]
              for s in range(20)}
    assert picked == {"dilate", "box"}
    only = {C.corrupt_label_map(seg, "mixture", s, mixture={"dilate": 0, "erode": 1})[1]["noise"] for s in range(5)}
    assert only == {"erode"}
    out, info = C.corrupt_label_map(seg, "mixture", 0, mixture={"dilate": 1}, dilate={"radius": 1})
    assert info["classes"][1]["sampled"] == {"radius": 1.0}
    for s in range(6):
        out, info = C.corrupt_label_map(seg, "alpha_beta", s, beta=0.5)
        assert info["noise"] in C.ALPHA_BETA_TYPES
        for c in (1, 2, 3):
            assert info["classes"][c]["changed_ratio"] == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize("call, match", [
    (lambda s: C.corrupt_label_map(s, "blur", 0), "unknown noise type"),
    (lambda s: C.corrupt_label_map(s, "dilate", 0, radius=(5, 2)), "high < low"),
    (lambda s: C.corrupt_label_map(s, "dilate", 0, radius=-1), ">= 0"),
    (lambda s: C.corrupt_label_map(s, "dilate", 0, iterations=3), "does not take"),
    (lambda s: C.corrupt_label_map(s, "markov", 0, theta1=1.5), "probability"),
    (lambda s: C.corrupt_label_map(s, "box", 0, beta=0.5), "does not take"),
    (lambda s: C.corrupt_label_map(s, "dilate", 0, beta=0), "beta"),
    (lambda s: C.corrupt_label_map(s, "alpha_beta", 0), "needs beta"),
    (lambda s: C.corrupt_label_map(s, "alpha_beta", 0, beta=0.5, types=["box"]), "subset"),
    (lambda s: C.corrupt_label_map(s, "mixture", 0), "needs mixture"),
    (lambda s: C.corrupt_label_map(s, "mixture", 0, mixture={"dilate": -1}), ">= 0"),
    (lambda s: C.corrupt_label_map(s, "mixture", 0, mixture={"mixture": 1}), "cannot mix"),
    (lambda s: C.corrupt_label_map(s, "mixture", 0, mixture={"dilate": 1}, erode={}), "unexpected"),
    (lambda s: C.corrupt_label_map(s, "dilate", 0, labels=[0, 1]), "background"),
    (lambda s: C.corrupt_label_map(s[None, None], "dilate", 0), "2D or 3D"),
    (lambda s: C.corrupt_label_map(s + 0.5, "dilate", 0), "integer"),
    (lambda s: C.scribble_mask(s > 0, np.random.default_rng(0), fraction=0), r"\(0, 1\]"),
])
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call(multiclass_seg())


def test_class_params_override_one_class():
    seg = multiclass_seg()
    out, info = C.corrupt_label_map(seg, "dilate", 0, radius=1, class_params={3: {"radius": 4}})
    assert info["classes"][1]["sampled"] == {"radius": 1.0}
    assert info["classes"][3]["sampled"] == {"radius": 4.0}
    with pytest.raises(ValueError, match="does not take"):
        C.corrupt_label_map(seg, "dilate", 0, class_params={3: {"T": 4}})
