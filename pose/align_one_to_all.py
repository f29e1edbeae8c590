"""One-to-All Animation's two alignment modes (``infer_function.py`` / ``infer_utils.py``).

``ref``  (``align_to_reference``): Wan-Animate's ``get_retarget_pose`` rebuilds every driving
         skeleton limb by limb with the reference's bone lengths (ratios measured on the anchor
         frame), places it with a ground or neck offset and rescales it to the reference canvas;
         hands are scaled and re-attached to the new wrists; faces get a rough alignment.
``pose`` (``warp_ref_to_pose`` + ``align_to_pose``): the reference IMAGE is scaled about its neck
         and moved onto the anchor frame's neck; the uncovered border becomes an outpainting
         mask; the driving skeletons are then rescaled limb by limb toward the reference's
         proportions measured on the reference skeleton scaled onto the anchor frame.

Facts and tolerances: tests/fixtures/reference/one_to_all/README.md section 5.
All work happens on the reference canvas: the driving points must already be in normalised
coordinates of a frame with the reference's aspect (``align.py`` maps them).

"Located" points: the official code takes every keypoint's coordinates at face value (its
detector always returns a location, with a score). Our layout marks a point that no detector
located as (0, 0, score 0); such points are treated as absent (the official code's ``None``):
limbs touching them take the fallback ratio, a child whose parent is absent hangs from the
nearest located ancestor, and absent points stay absent in the output. A score-0 point WITH
coordinates is used like the official code uses it.

Quirks kept ('ref' mode): ratios are measured in pixels with the reference canvas scaled by
scale_min and int-truncated; left/right limb ratios take their max, eye/ear ratios their mean;
feet are capped at half the new shin; frame 0 (not the anchor) gets its x re-anchored on the hip
centre; hand points under 0.4 are dropped and kept hand points are truncated to whole pixels;
when the right-hand data lies nearer the left wrist the two hands swap slots (the official
deltas then land the swapped hand off the wrist by the wrist separation - reproduced as is).
Quirk kept ('pose' mode): the right arm chain carries the LEFT hand and vice versa.

Guards added: a limb ratio that cannot be measured (absent end, zero length) takes the mean
shoulder ratio like the official code, or 1 when the shoulders cannot be measured either (listed
in ``info["fallbacks"]``); scale_min falls back from ankles to hips to 1; without a neck the
offset matches body centroids; no symmetric repair of absent limbs (``fix_lack_keypoints_use_sym``)
and no dropping of a joint from every frame because the anchor lacks it (the official code would
crash on those paths in One-to-All); a hand whose wrist is absent follows the global mapping;
face guards are in ``align_face``; in 'pose' mode a bone with an absent end is skipped (ratio 1)
and the warp anchors fall back from the neck to mid-shoulders to the body centroid.
"""
from __future__ import annotations

import cv2
import numpy as np

from .keypoints import FACE, LEFT_HAND, RIGHT_HAND
from .retarget_limits import clamp_ratio

_LH = list(range(LEFT_HAND.start, LEFT_HAND.stop))
_RH = list(range(RIGHT_HAND.start, RIGHT_HAND.stop))
_LF = [18, 19, 20]  # left big toe, small toe, heel
_RF = [21, 22, 23]  # right big toe, small toe, heel

# Wan-Animate's limbSeq, 0-based on its 20-point body (18 OpenPose points + 18 LToe + 19 RToe).
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19))
PARENT = {child: parent for parent, child in LIMBS}
LEFT_FOOT_LIMB, RIGHT_FOOT_LIMB = 17, 18
HAND_SCORE = 0.4        # get_scaled_pose's threshold for hand points and body flags
FACE_NOSE_TIP = 30
EPS = 1e-6


def located(points: np.ndarray) -> np.ndarray:
    """True where a detector gave a location (score > 0, or coordinates other than the (0, 0) marker)."""
    return (points[..., 2] > 0) | (points[..., 0] != 0) | (points[..., 1] != 0)


# --- shared: rough face alignment (infer_function._face_scale_only) ---------------------------

def _face_scale(src: np.ndarray, src_ok: np.ndarray, ref: np.ndarray, ref_ok: np.ndarray, pair) -> float:
    a, b = pair
    if not (src_ok[a] and src_ok[b] and ref_ok[a] and ref_ok[b]):
        return 1.0
    src_len = float(np.linalg.norm(src[a] - src[b]))
    return float(np.linalg.norm(ref[a] - ref[b])) / src_len if src_len > EPS else 1.0


def align_face(face: np.ndarray, ref_face: np.ndarray | None, target_nose: np.ndarray | None) -> np.ndarray:
    """Scale a 68-point face to the reference's eye-corner width (36-45) and nose-bridge-to-chin
    height (27-8), then put its nose tip (30) on ``target_nose``.

    The official code scales about the mean of eye/nose/mouth anchors and then translates; the
    pivot cancels, so this is target + scale * (p - nose_tip). Guards: a missing anchor pair
    gives scale 1; a missing nose tip uses the centroid of the located points as the pivot; no
    target keeps the pivot where it is; a face with no located point is returned unchanged.
    """
    out = face.astype(np.float64).copy()
    ok = located(face)
    if not ok.any():
        return out
    src = face[:, :2].astype(np.float64)
    if ref_face is not None:
        ref, ref_ok = ref_face[:, :2].astype(np.float64), located(ref_face)
        scale = np.array([_face_scale(src, ok, ref, ref_ok, (36, 45)), _face_scale(src, ok, ref, ref_ok, (27, 8))])
    else:
        scale = np.ones(2)
    pivot = src[FACE_NOSE_TIP] if ok[FACE_NOSE_TIP] else src[ok].mean(axis=0)
    target = pivot if target_nose is None else np.asarray(target_nose, np.float64)
    out[ok, :2] = target + (src[ok] - pivot) * scale
    return out


# --- 'ref' mode: Wan-Animate get_retarget_pose ------------------------------------------------

def _body20(person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wan-Animate's 20-point body (toe = mean of big and small toe) and its located mask."""
    body = np.zeros((20, 3), np.float64)
    ok = np.zeros(20, bool)
    body[:18] = person[:18]
    ok[:18] = located(person[:18])
    for slot, toes in ((18, [18, 19]), (19, [21, 22])):
        have = [t for t in toes if located(person[t])]
        if have:
            body[slot] = person[have].astype(np.float64).mean(axis=0)
            ok[slot] = True
    return body, ok


def _limb_lengths(body: np.ndarray, ok: np.ndarray, width: float, height: float) -> list[float | None]:
    out = []
    for a, b in LIMBS:
        if ok[a] and ok[b]:
            out.append(float(np.hypot((body[a, 0] - body[b, 0]) * width, (body[a, 1] - body[b, 1]) * height)))
        else:
            out.append(None)
    return out


def _scale_min(src, src_ok, dst, dst_ok, width, height) -> float:
    """Driving person's height over the reference's (nose to ankles, else nose to hips)."""
    for lo in ((10, 13), (8, 11)):
        idx = (0,) + lo
        if all(src_ok[i] and dst_ok[i] and src[i, 2] > 0.5 and dst[i, 2] > 0.5 for i in idx):
            src_h = height * abs((src[lo[0], 1] + src[lo[1], 1]) / 2 - src[0, 1])
            dst_h = height * abs((dst[lo[0], 1] + dst[lo[1], 1]) / 2 - dst[0, 1])
            if src_h > EPS and dst_h > EPS:
                return src_h / dst_h
    return 1.0  # sqrt(src area) / sqrt(dst area): both skeletons live on the reference canvas


def _body_flag(body, ok, threshold=HAND_SCORE) -> int:
    """check_full_body: 2 full body, 1 three-quarter (hips), 0 half body."""
    def good(i):
        return ok[i] and body[i, 1] <= 1 and body[i, 2] >= threshold
    if all(good(i) for i in (10, 13, 8, 11)):
        return 2
    if good(8) and good(11):
        return 1
    return 0


_FLAGS = {2: "full_body", 1: "three_quarter_body", 0: "half_body"}


def _rebuild(px: np.ndarray, ok: np.ndarray, ratios) -> np.ndarray:
    """Rebuild a 20-point skeleton along LIMBS: child = new parent + ratio * (old child - old parent).

    Equivalent to the official length/angle form; a child whose parent is absent hangs from the
    nearest located ancestor; if the neck is absent too the child keeps its place."""
    new = px.copy()
    for i, (a, b) in enumerate(LIMBS):
        if not ok[b]:
            continue
        anc = a
        while not ok[anc] and anc in PARENT:
            anc = PARENT[anc]
        if ok[anc]:
            new[b] = new[anc] + (px[b] - px[anc]) * ratios[i]
    return new


def _frame_ratios(px: np.ndarray, ok: np.ndarray, ratios: list[float]) -> list[float]:
    """Per-frame ratios with get_scaled_pose's cap: foot length <= 0.5 x new shin length."""
    out = list(ratios)
    for foot, shin in ((RIGHT_FOOT_LIMB, 8), (LEFT_FOOT_LIMB, 11)):
        (fa, fb), (sa, sb) = LIMBS[foot], LIMBS[shin]
        if ok[fa] and ok[fb] and ok[sa] and ok[sb]:
            foot_len = float(np.linalg.norm(px[fa] - px[fb]))
            cap = 0.5 * float(np.linalg.norm(px[sa] - px[sb])) * ratios[shin]
            if foot_len * ratios[foot] > cap and foot_len > 0:
                out[foot] = cap / foot_len
    return out


def _retarget_params(src_person, ref_person, width, height, fallbacks):
    """Everything get_retarget_pose derives from the anchor frame (src) and the reference (dst)."""
    src, src_ok = _body20(src_person)
    dst, dst_ok = _body20(ref_person)
    scale_min = _scale_min(src, src_ok, dst, dst_ok, width, height)
    dst_w, dst_h = max(1, int(width * scale_min)), max(1, int(height * scale_min))
    body_flag = min(_body_flag(dst, dst_ok), _body_flag(src, src_ok))

    src_len = _limb_lengths(src, src_ok, width, height)
    dst_len = _limb_lengths(dst, dst_ok, dst_w, dst_h)
    ratios = [-1.0 if s is None or d is None or s <= 0 else d / s for s, d in zip(src_len, dst_len)]
    shoulders = (ratios[0] + ratios[1]) / 2 if ratios[0] != -1 and ratios[1] != -1 else None
    for i, r in enumerate(ratios):
        if r == -1:  # the official fallback is the mean shoulder ratio; ours adds 1 when that is missing too
            fallbacks.append(f"limb{i}=" + ("shoulder_mean" if shoulders is not None else "1"))
            ratios[i] = shoulders if shoulders is not None else 1.0
    for a, b in ((0, 1), (2, 4), (3, 5), (6, 9), (7, 10), (8, 11), (17, 18)):
        ratios[a] = ratios[b] = max(ratios[a], ratios[b])
    for a, b in ((13, 15), (14, 16)):
        ratios[a] = ratios[b] = (ratios[a] + ratios[b]) / 2
    scale = float(np.median(ratios))  # framing guard (retarget_limits.py): limbs within 0.5..2x the body's scale
    for i, r in enumerate(ratios):
        ratios[i], clamped = clamp_ratio(r, scale)
        if clamped:
            fallbacks.append(f"limb{i}_clamped")

    src_px = src[:, :2] * (width, height)
    rescaled = _rebuild(src_px, src_ok, ratios)
    if body_flag == 2:
        ground_y = max(dst[10, 1], dst[13, 1]) * dst_h
        if dst_ok[18] and dst_ok[19]:
            ground_y = max((dst[13, 1] + dst[18, 1]) / 2, (dst[10, 1] + dst[19, 1]) / 2) * dst_h
        delta_y = max(rescaled[10, 1], rescaled[13, 1]) - ground_y
        ground_x = (rescaled[8, 0] + rescaled[11, 0]) / 2
        delta_x = ground_x - (dst[8, 0] + dst[11, 0]) * dst_w / 2
    elif src_ok[1] and dst_ok[1]:
        delta_y = rescaled[1, 1] - dst[1, 1] * dst_h
        delta_x = rescaled[1, 0] - dst[1, 0] * dst_w
        ground_x = rescaled[1, 0]
    else:  # no neck to anchor on: match the centroids of the body points both have
        fallbacks.append("neck_offset")
        both = np.flatnonzero(src_ok & dst_ok)
        if len(both):
            delta_x, delta_y = rescaled[both].mean(axis=0) - dst[both, :2].mean(axis=0) * (dst_w, dst_h)
        else:
            delta_x = delta_y = 0.0
        ground_x = rescaled[1, 0]
    return {"bone_ratio_list": [float(r) for r in ratios], "delta_x": float(delta_x), "delta_y": float(delta_y),
            "rescaled_src_ground_x": float(ground_x), "body_flag": _FLAGS[body_flag], "scale_min": float(scale_min),
            "dst_size_scaled": [dst_w, dst_h]}


def _scale_hand(hand: np.ndarray, ratio: float, wrist: np.ndarray | None):
    """deal_hand_keypoints: scale about the hand root; points under 0.4 are dropped."""
    ok = located(hand)
    kept = ok & (hand[:, 2] >= HAND_SCORE)
    if ok[0]:
        root = hand[0, :2].astype(np.float64)
    elif wrist is not None:
        root = wrist
    elif kept.any():
        root = hand[kept, :2].astype(np.float64).mean(axis=0)
    else:
        root = np.zeros(2)
    pts = root + (hand[:, :2].astype(np.float64) - root) * ratio
    return pts, kept


def _place_hand(pts, kept, scores, delta, size) -> np.ndarray:
    """get_handpose_meta: to pixels plus delta, truncated to int like the official code."""
    out = np.zeros((len(pts), 3), np.float64)
    px = np.trunc(pts[kept] * size + delta)
    out[kept, :2] = px / size
    out[kept, 2] = scores[kept]
    return out


def _retarget_person(person: np.ndarray, params: dict, is_first: bool, ref_face, size) -> np.ndarray:
    width, height = size
    ratios, scale_min = params["bone_ratio_list"], params["scale_min"]
    body, ok = _body20(person)
    px = body[:, :2] * size
    frame_ratios = _frame_ratios(px, ok, ratios)
    new = _rebuild(px, ok, frame_ratios)

    delta = np.array([params["delta_x"], params["delta_y"]])
    if is_first:  # get_scaled_pose re-anchors x on frame 0 (~0 when the anchor is frame 0)
        if params["body_flag"] == "full_body" and ok[8] and ok[11]:
            delta[0] += (new[8, 0] + new[11, 0]) / 2 - params["rescaled_src_ground_x"]
        elif params["body_flag"] == "half_body" and ok[1]:
            delta[0] += new[1, 0] - params["rescaled_src_ground_x"]
    mapped = (new - delta) / scale_min  # reference-canvas pixels

    out = np.zeros_like(person, dtype=np.float64)
    out[:18, :2] = mapped[:18] / size
    out[:18, 2] = person[:18, 2]
    out[:18][~ok[:18]] = 0.0
    # Our individual foot points follow the toe limb (linear, so their mean is Wan's toe).
    for feet, ankle, limb in ((_LF, 13, LEFT_FOOT_LIMB), (_RF, 10, RIGHT_FOOT_LIMB)):
        for f in feet:
            if not located(person[f]):
                continue
            anc = ankle
            while not ok[anc] and anc in PARENT:
                anc = PARENT[anc]
            new_f = new[anc] + (person[f, :2] * size - px[anc]) * frame_ratios[limb] if ok[anc] else person[f, :2] * size
            out[f, :2] = (new_f - delta) / scale_min / size
            out[f, 2] = person[f, 2]

    # Hands: scaled by max(shoulder ratios) / scale_min and re-attached to the new wrists.
    hand_ratio = max(ratios[0], ratios[1]) / scale_min
    wr_old, wl_old = px[4], px[7]
    right = person[_RH].astype(np.float64)
    left = person[_LH].astype(np.float64)
    r_pts, r_kept = _scale_hand(right, hand_ratio, body[4, :2] if ok[4] else None)
    l_pts, l_kept = _scale_hand(left, hand_ratio, body[7, :2] if ok[7] else None)
    if ok[4] and ok[7]:
        d_r = mapped[4] - wr_old
        d_l = mapped[7] - wl_old
        if r_kept[0]:
            d_r = d_r + wr_old - r_pts[0] * size
        if l_kept[0]:
            d_l = d_l + wl_old - l_pts[0] * size
        r_root = r_pts[0] * size if r_kept[0] else -np.asarray(size, np.float64)  # dropped root = (-1, -1)
        if np.linalg.norm(wr_old - r_root) > np.linalg.norm(wl_old - r_root):
            # The right-hand data lies nearer the left wrist: the official code swaps the hands.
            out[_RH] = _place_hand(l_pts, l_kept, left[:, 2], d_r, size)
            out[_LH] = _place_hand(r_pts, r_kept, right[:, 2], d_l, size)
        else:
            out[_RH] = _place_hand(r_pts, r_kept, right[:, 2], d_r, size)
            out[_LH] = _place_hand(l_pts, l_kept, left[:, 2], d_l, size)
    else:  # a wrist is missing: that hand follows the wrist it has, or the global mapping
        for slot, pts, kept, scores, w in ((_RH, r_pts, r_kept, right[:, 2], 4), (_LH, l_pts, l_kept, left[:, 2], 7)):
            if ok[w]:
                out[slot] = _place_hand(pts, kept, scores, mapped[w] - px[w], size)
            else:
                hand = np.zeros((len(pts), 3), np.float64)
                hand[kept, :2] = (pts[kept] * size - delta) / scale_min / size
                hand[kept, 2] = scores[kept]
                out[slot] = hand

    face = person[FACE]
    if located(face).any():
        nose = out[0, :2] if ok[0] else None
        aligned = align_face(face, ref_face, nose)
        if nose is None:  # no retargeted nose: the face follows the global mapping
            fok = located(face)
            aligned[fok, :2] = (aligned[fok, :2] * size - delta) / scale_min / size
        out[FACE] = aligned
    return out


def retarget_ref_mode(driving_people: list[np.ndarray], ref_person: np.ndarray, anchor_frame: int, size):
    """One-to-All 'ref' mode on people arrays already on the reference canvas.

    driving_people: per frame (P, 134, 3) float arrays; returns the same structure and info."""
    width, height = size
    fallbacks: list[str] = []
    params = _retarget_params(driving_people[anchor_frame][0], ref_person, width, height, fallbacks)
    ref_face = ref_person[FACE] if located(ref_person[FACE]).any() else None
    size_arr = np.array([width, height], np.float64)
    out = []
    for index, people in enumerate(driving_people):
        out.append(np.stack([_retarget_person(p, params, index == 0, ref_face, size_arr) for p in people])
                   if len(people) else people)
    params["fallbacks"] = fallbacks
    return out, params


# --- 'pose' mode: warp_ref_to_pose + align_to_pose ------------------------------------------

def _anchor(person: np.ndarray) -> np.ndarray:
    """Neck, else mid-shoulders, else centroid of the located body points."""
    ok = located(person[:18])
    if ok[1]:
        return person[1, :2].astype(np.float64)
    if ok[2] and ok[5]:
        return (person[2, :2] + person[5, :2]).astype(np.float64) / 2
    return person[:18][ok, :2].astype(np.float64).mean(axis=0) if ok.any() else np.full(2, 0.5)


def reference_scale(ref_person: np.ndarray, drv_person: np.ndarray, conf: float = 0.9):
    """scale_and_translate_pose's ratio (driving size / reference size), in float32 like the
    official code: mean of shoulder-width and torso-height ratios when both skeletons have
    shoulders and hips >= conf; else the shoulder distance; else the ear distance; else 1."""
    f32 = np.float32
    ref = ref_person[:18, :2].astype(f32)
    drv = drv_person[:18, :2].astype(f32)
    rs, ds = ref_person[:18, 2], drv_person[:18, 2]
    th = f32(1e-6)

    def valid(*idx):
        return all(rs[i] >= conf and ds[i] >= conf for i in idx)

    shoulder_ok, hip_ok = valid(2, 5), valid(8, 11)
    if shoulder_ok and hip_ok:
        ref_w, drv_w = abs(ref[5, 0] - ref[2, 0]), abs(drv[5, 0] - drv[2, 0])
        x_ratio = drv_w / ref_w if ref_w > th else f32(1.0)
        ref_t = abs(np.mean(ref[[8, 11], 1]) - np.mean(ref[[2, 5], 1]))
        drv_t = abs(np.mean(drv[[8, 11], 1]) - np.mean(drv[[2, 5], 1]))
        y_ratio = drv_t / ref_t if ref_t > th else f32(1.0)
        ratio = (x_ratio + y_ratio) / f32(2)
    elif shoulder_ok:
        ref_d, drv_d = np.linalg.norm(ref[2] - ref[5]), np.linalg.norm(drv[2] - drv[5])
        ratio = drv_d / ref_d if ref_d > th else f32(1.0)
    elif located(ref_person[[16, 17]]).all() and located(drv_person[[16, 17]]).all():
        ref_d, drv_d = np.linalg.norm(ref[16] - ref[17]), np.linalg.norm(drv[16] - drv[17])
        ratio = drv_d / ref_d if ref_d > th else f32(1.0)
    else:
        ratio = f32(1.0)
    return f32(ratio), bool(shoulder_ok), bool(hip_ok)


def warp_matrix(ref_person: np.ndarray, drv_person: np.ndarray, width: int, height: int, scale) -> np.ndarray:
    """M = [[r, 0, (1-r) x0 + dx], [0, r, (1-r) y0 + dy]] (float32, pixels): scale the reference
    about its neck (x0, y0) and move the neck onto the anchor frame's neck."""
    f32 = np.float32
    r = f32(scale)
    ref_neck, drv_neck = _anchor(ref_person).astype(f32), _anchor(drv_person).astype(f32)
    x0, y0 = ref_neck[0] * f32(width), ref_neck[1] * f32(height)
    dx, dy = drv_neck[0] * f32(width) - x0, drv_neck[1] * f32(height) - y0
    return np.array([[r, 0, (f32(1) - r) * x0 + dx], [0, r, (f32(1) - r) * y0 + dy]], np.float32)


def warp_image(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The warped image (bilinear, black border) and the outpainting mask (float32, 1 where no
    reference pixel landed: nearest-neighbour warp of zeros with border 255)."""
    h, w = image.shape[:2]
    warped = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(0, 0, 0))
    mask = cv2.warpAffine(np.zeros((h, w), np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=255)
    return warped, (mask.astype(np.float32) / 255.0)


def warp_points(person: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Apply the pixel matrix to a person's located points (normalised in and out)."""
    out = person.astype(np.float64).copy()
    ok = located(person)
    m = matrix.astype(np.float64)
    px = out[ok, :2] * (width, height)
    out[ok, 0] = (m[0, 0] * px[:, 0] + m[0, 2]) / width
    out[ok, 1] = (m[1, 1] * px[:, 1] + m[1, 2]) / height
    return out


RATIO_PAIRS = ((0, 1), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (0, 14), (0, 15), (14, 16), (15, 17),
               (8, 9), (9, 10), (11, 12), (12, 13), (1, 8), (1, 11))


def stepwise_ratios(ref_scaled: np.ndarray, ref_scores, src: np.ndarray, src_scores, conf: float = 0.9) -> dict:
    """compute_ratios_stepwise: bone ratios unlocked group by group as more joints of both
    skeletons reach ``conf``; left/right pairs averaged."""
    def valid(idx):
        return all(ref_scores[i] >= conf and src_scores[i] >= conf for i in idx)

    def ratio(a, b):
        src_len = float(np.linalg.norm(src[a] - src[b]))
        return float(np.linalg.norm(ref_scaled[a] - ref_scaled[b])) / src_len if src_len > EPS else 1.0

    r = {p: 1.0 for p in RATIO_PAIRS}
    head = [0, 1, 14, 15, 16, 17]
    if valid(head):
        for p in ((0, 1), (0, 14), (0, 15), (14, 16), (15, 17)):
            r[p] = ratio(*p)
    if valid(head + [2, 5]):
        r[(1, 2)], r[(1, 5)] = ratio(1, 2), ratio(1, 5)
    if valid(head + [2, 5, 3, 6]):
        r[(2, 3)], r[(5, 6)] = ratio(2, 3), ratio(5, 6)
        r[(3, 4)], r[(6, 7)] = r[(2, 3)], r[(5, 6)]
    if valid(head + [2, 5, 3, 6, 8, 11]):
        r[(1, 8)], r[(1, 11)] = ratio(1, 8), ratio(1, 11)
    if valid(head + [2, 5, 3, 6, 8, 11, 4, 7]):
        r[(3, 4)], r[(6, 7)] = ratio(3, 4), ratio(6, 7)
    if valid(head + [2, 5, 3, 6, 8, 11, 4, 7, 9, 12]):
        r[(8, 9)], r[(11, 12)] = ratio(8, 9), ratio(11, 12)
        r[(9, 10)], r[(12, 13)] = r[(8, 9)], r[(11, 12)]
    if valid(range(18)):
        for p in RATIO_PAIRS:
            r[p] = ratio(*p)
    for a, b in (((1, 2), (1, 5)), ((2, 3), (5, 6)), ((3, 4), (6, 7)), ((8, 9), (11, 12)), ((9, 10), (12, 13))):
        r[a] = r[b] = (r[a] + r[b]) / 2.0
    return r


# (parent, child, moved points, "parent-side" offset): offsets are (parent - child)(1 - r) for the
# upper body and (child - parent)(r - 1) for the legs, which is the same vector. The hands quirk is
# kept: the RIGHT arm chain carries the LEFT hand (One-to-All's hands[1]) and vice versa.
_POSE_STEPS = (
    ((0, 1), 1, 0, [0, 14, 15, 16, 17]),
    ((1, 2), 1, 2, [2, 3, 4] + _LH),
    ((1, 5), 1, 5, [5, 6, 7] + _RH),
    ((2, 3), 2, 3, [3, 4] + _LH),
    ((3, 4), 3, 4, [4] + _LH),
    ((5, 6), 5, 6, [6, 7] + _RH),
    ((6, 7), 6, 7, [7] + _RH),
    ((0, 14), 0, 14, [14]),
    ((0, 15), 0, 15, [15]),
    ((14, 16), 14, 16, [16]),
    ((15, 17), 15, 17, [17]),
    ((1, 8), 1, 8, [8]),
    ((1, 11), 1, 11, [11]),
    ((8, 9), 8, 9, [9, 10] + _RF),
    ((9, 10), 9, 10, [10] + _RF),
    ((11, 12), 11, 12, [12, 13] + _LF),
    ((12, 13), 12, 13, [13] + _LF),
)


def align_to_pose_person(person: np.ndarray, ratios: dict, ref_face) -> np.ndarray:
    """align_to_pose for one person: bone offsets in the official order, then the rough face
    alignment. A bone with an unlocated end in this frame is skipped (ratio 1)."""
    out = person.astype(np.float64).copy()
    ok = located(person)
    p = out[:, :2]
    for key, parent, child, moved in _POSE_STEPS:
        if not (ok[parent] and ok[child]):
            continue
        p[moved] += (p[parent] - p[child]) * (1.0 - ratios[key])
    out[~ok] = 0.0
    face = person[FACE]
    if located(face).any():
        out[FACE] = align_face(out[FACE], ref_face, p[0] if ok[0] else None)
    return out


def pose_mode(driving_people: list[np.ndarray], ref_person: np.ndarray, image: np.ndarray, anchor_frame: int,
              conf: float = 0.9, rescale: bool = True):
    """One-to-All 'pose' mode. Returns (aligned people per frame, warped reference person,
    warped image, mask, info). ``rescale`` False is the official ``align=False``: the reference is
    still warped onto the anchor pose, the driving skeletons stay as detected."""
    height, width = image.shape[:2]
    drv = driving_people[anchor_frame][0]
    scale, shoulder_ok, hip_ok = reference_scale(ref_person, drv, conf)
    matrix = warp_matrix(ref_person, drv, width, height, scale)
    warped_image, mask = warp_image(image, matrix)
    ref_warped = warp_points(ref_person, matrix, width, height)

    ratios = stepwise_ratios(ref_warped[:18, :2], ref_person[:18, 2], drv[:18, :2].astype(np.float64),
                             drv[:18, 2], conf)
    ref_face = ref_warped[FACE] if located(ref_person[FACE]).any() else None
    if rescale:
        out = [np.stack([align_to_pose_person(p, ratios, ref_face) for p in people]) if len(people) else people
               for people in driving_people]
    else:
        out = [np.array(people, np.float64) for people in driving_people]
    info = {"scale_ratio": float(scale), "M": matrix.astype(np.float64).tolist(), "shoulder_ok": shoulder_ok,
            "hip_ok": hip_ok, "ratios": {f"{a}-{b}": float(v) for (a, b), v in ratios.items()},
            "warp_flags": {"image": "INTER_LINEAR, border 0", "mask": "INTER_NEAREST, border 255"}, "rescale": bool(rescale)}
    return out, ref_warped, warped_image, mask, info


# --- automatic anchor frame: infer_function.pick_good_source_frame -----------------------------

_SYMMETRIC = (((2, 3), (5, 6)), ((3, 4), (6, 7)), ((8, 9), (11, 12)), ((9, 10), (12, 13)))  # arm3/arm6 .. ll2/rl2


def _angle_with_vertical(v) -> float:
    return float(np.arctan2(abs(v[0]), abs(v[1]) + 1e-9))


def _angle_with_horizontal(v) -> float:
    return float(np.arctan2(abs(v[1]), abs(v[0]) + 1e-9))


def _upright(body: np.ndarray, torso_deg: float = 30.0, level_deg: float = 30.0) -> bool:
    """Torso within 30 degrees of vertical, shoulders and hips within 30 degrees of level."""
    if (body[[1, 2, 5, 8, 11]] <= 0).any():
        return False
    torso = (body[8] + body[11]) / 2 - (body[2] + body[5]) / 2
    return (_angle_with_vertical(torso) <= np.radians(torso_deg)
            and _angle_with_horizontal(body[5] - body[2]) <= np.radians(level_deg)
            and _angle_with_horizontal(body[11] - body[8]) <= np.radians(level_deg))


def pick_anchor_frame(driving_people: list[np.ndarray], ref_person: np.ndarray, th: float = 1e-6,
                      ratio_thr: float = 1.5) -> tuple[int, dict]:
    """The official automatic anchor: the frame whose limb ratios to the reference are most
    left/right symmetric (arms and legs, within 1.5x), then upright, then closest in shoulder tilt
    and head direction to the reference; ties go to the earliest frame.

    Coordinates are taken as they are (normalised, on the reference canvas), like the official
    code; frames with nobody are skipped. Returns (index, info)."""
    ref = ref_person[:18, :2].astype(np.float64)
    ref_shoulder = _angle_with_horizontal(ref[5] - ref[2])
    ref_head = _angle_with_vertical(ref[0] - ref[1])
    candidates = []
    for idx, people in enumerate(driving_people):
        if not len(people):
            continue
        body = np.asarray(people[0][:18, :2], np.float64)

        def ratio(a, b):
            src = float(np.linalg.norm(body[a] - body[b]))
            return 1.0 if src < th else float(np.linalg.norm(ref[a] - ref[b])) / src

        sym = 0
        for left, right in _SYMMETRIC:
            v1, v2 = ratio(*left), ratio(*right)
            if v1 >= th and v2 >= th and 1.0 / ratio_thr <= v1 / v2 <= ratio_thr:
                sym += 1
        score = (abs(_angle_with_horizontal(body[5] - body[2]) - ref_shoulder)
                 + abs(_angle_with_vertical(body[0] - body[1]) - ref_head))
        candidates.append((-sym, not _upright(body), score, idx))
    if not candidates:
        raise ValueError("no driving frame has a person to anchor the alignment on")
    best = min(candidates)
    return best[3], {"auto_anchor": {"sym_count": -best[0], "upright": not best[1], "angle_score": best[2]}}
