"""Video frames, face tracking and One-Euro smoothing."""
import math

import cv2
import numpy as np
import pytest

from cfdrnn_keras.runtime.landmarker import FaceLandmarks
from cfdrnn_keras.runtime.video import (FaceTracker, OneEuroFilter, VideoReadError, alpha_from_cutoff, cutoff_from_alpha,
                                is_video_path, open_video, read_frames)


def test_alpha_and_cutoff_are_inverse():
    for alpha in (0.05, 0.3, 0.5, 0.9):
        assert alpha_from_cutoff(cutoff_from_alpha(alpha)) == pytest.approx(alpha)
    assert cutoff_from_alpha(1.0) == math.inf and alpha_from_cutoff(math.inf) == 1.0
    # Hand-computed: cutoff 1/(2π) cycles per frame → tau = 1 → alpha = 1/2.
    assert alpha_from_cutoff(1 / (2 * math.pi)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        cutoff_from_alpha(0.0)


def test_without_speed_term_it_is_the_exponential_filter():
    smoother = OneEuroFilter(alpha_still=0.5, beta=0.0)
    box = (0, 0, 100, 100)
    outputs = [smoother(np.full((68, 2), value), box)[0][0, 0] for value in (0.0, 10.0, 10.0, 10.0)]
    assert outputs == pytest.approx([0.0, 5.0, 7.5, 8.75])  # x̂ = ½x + ½x̂


def _face_track(frames, motion_per_frame, noise, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 100, (68, 2))
    for t in range(frames):
        true = base + motion_per_frame * t
        yield true, true + rng.normal(0, noise, true.shape), (true[:, 0].min(), true[:, 1].min(),
                                                             true[:, 0].max(), true[:, 1].max())


def test_still_face_is_steadied_and_moving_face_does_not_lag():
    still = OneEuroFilter(alpha_still=0.2, beta=20.0)
    raw_error, smooth_error = [], []
    for t, (true, noisy, box) in enumerate(_face_track(60, 0.0, 1.0)):
        smoothed, _ = still(noisy, box)
        if t >= 10:
            raw_error.append(np.abs(noisy - true).mean())
            smooth_error.append(np.abs(smoothed - true).mean())
    assert np.mean(smooth_error) < 0.6 * np.mean(raw_error)

    # A face moving 5 px per frame (5 % of its size): One-Euro follows, a plain exponential filter lags.
    adaptive, plain = OneEuroFilter(alpha_still=0.2, beta=20.0), OneEuroFilter(alpha_still=0.2, beta=0.0)
    for true, noisy, box in _face_track(30, np.array([5.0, 0.0]), 0.0):
        lag_adaptive = np.linalg.norm(adaptive(noisy, box)[0] - true, axis=-1).mean()
        lag_plain = np.linalg.norm(plain(noisy, box)[0] - true, axis=-1).mean()
    # Hand-computed steady lag of the exponential filter on a ramp: v·(1 - α)/α = 5·0.8/0.2 = 20 px.
    assert lag_plain == pytest.approx(20, abs=0.1)
    assert lag_adaptive < 0.25 * lag_plain


def _face(box):
    x0, y0, x1, y1 = box
    points = np.stack(np.meshgrid(np.linspace(x0, x1, 17), np.linspace(y0, y1, 4)), -1).reshape(-1, 2)[:68]
    return FaceLandmarks(box=box, points=points, confidence=np.ones(68))


def test_tracker_keeps_ids_with_their_faces():
    tracker = FaceTracker()
    first = tracker.update([_face((0, 0, 100, 100)), _face((300, 0, 400, 100))])
    assert [track for track, _ in first] == [0, 1]
    # Next frame: the faces come in the other order and moved a little; a third appears.
    second = tracker.update([_face((305, 2, 405, 102)), _face((500, 500, 550, 550)), _face((3, 1, 103, 101))])
    assert [track for track, _ in second] == [1, 2, 0]
    # Without smoothing the faces pass through unchanged.
    assert second[0][1].box == (305, 2, 405, 102)
    # Face 0 leaves; when a face shows up there again it is a new track.
    tracker.update([_face((305, 2, 405, 102))])
    assert [track for track, _ in tracker.update([_face((0, 0, 100, 100))])] == [3]


def test_tracker_smooths_when_asked():
    tracker = FaceTracker(alpha_still=0.5, beta=0.0)
    tracker.update([_face((0, 0, 100, 100))])
    (_, face), = tracker.update([_face((4, 0, 104, 100))])
    assert face.box == pytest.approx((2, 0, 102, 100))
    assert face.points[0] == pytest.approx((2, 0))


def _write_video(path, frames, size=(160, 120), fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_read_frames_gives_every_frame_as_rgb(tmp_path):
    path = tmp_path / "clip.avi"
    red_bgr = np.zeros((120, 160, 3), np.uint8)
    red_bgr[:, :, 2] = 255
    _write_video(path, [red_bgr] * 7)
    capture, info = open_video(path)
    capture.release()
    assert info.fps == pytest.approx(10.0) and (info.width, info.height) == (160, 120)
    frames = list(read_frames(path))
    assert [index for index, _ in frames] == list(range(7))
    frame = frames[0][1]
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
    assert frame[..., 0].mean() > 240 and frame[..., 2].mean() < 15  # red is channel 0 in RGB


def test_unreadable_videos_are_one_line_errors(tmp_path):
    assert is_video_path("a/b/Clip.MP4") and not is_video_path("photo.jpg")
    with pytest.raises(VideoReadError, match="file not found"):
        open_video(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty file"):
        open_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video at all" * 100)
    with pytest.raises(VideoReadError) as info:
        list(read_frames(junk))
    assert str(junk) in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# Hard cuts (issue 15): a track ends where the face jumps; drawings and JSON use the same id
# ----------------------------------------------------------------------------------------------
def _centred(samples_dir, name, shift=0.0):
    """A sample photo cut to a 320×320 frame with its annotated face in the middle (as a camera would
    frame it), and that face as FaceLandmarks (the annotation, so no model is needed)."""
    from data_pipelines.pts import read_pts

    image = cv2.imread(str(samples_dir / name))[:, :, ::-1]
    points = read_pts(samples_dir / (name.rsplit(".", 1)[0] + ".pts")).astype(np.float64)
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    scale = 320 / (max(x1 - x0, y1 - y0) * 2.5)
    offset = np.array([160 + shift - (x0 + x1) / 2 * scale, 160 - (y0 + y1) / 2 * scale])
    matrix = np.float32([[scale, 0, offset[0]], [0, scale, offset[1]]])
    frame = cv2.warpAffine(np.ascontiguousarray(image), matrix, (320, 320), borderMode=cv2.BORDER_REFLECT)
    points = points * scale + offset
    box = (*points.min(0), *points.max(0))
    return frame, FaceLandmarks(box=tuple(float(v) for v in box), points=points, confidence=np.ones(68))


def test_a_hard_cut_to_another_person_starts_a_new_track_without_smoothing_across_it(samples_dir):
    from cfdrnn_keras.runtime.drawing import face_label
    from cfdrnn_keras.runtime.face_detector import iou

    # takeo → einstein: two gray photos whose frames look alike (histograms closer than CUT_DISTANCE),
    # so the faces themselves must tell them apart; einstein → lenna: a cut the frames show.
    shots = [("takeo.png", 3), ("einstein.jpg", 3), ("lenna.png", 2)]
    frames = [_centred(samples_dir, name, shift=2.0 * t) for name, count in shots for t in range(count)]
    assert iou(frames[2][1].box, frames[3][1].box) > 0.3  # the boxes alone would continue the track

    tracker = FaceTracker(alpha_still=0.3, beta=20.0)
    tracked = [tracker.update([face], frame)[0] for frame, face in frames]
    ids = [track for track, _ in tracked]
    assert ids == [0, 0, 0, 1, 1, 1, 2, 2]
    assert tracker.cuts == 1  # einstein → lenna by the frames; takeo → einstein by the faces
    for index in (3, 6):  # the first face after each cut is its own raw points: nothing blended in
        np.testing.assert_allclose(tracked[index][1].points, frames[index][1].points)
    assert not np.allclose(tracked[4][1].points, frames[4][1].points)  # smoothing does run within a shot

    # Without the frames only boxes are compared: the old behaviour, one track through both people.
    blind = FaceTracker()
    assert [blind.update([face])[0][0] for _, face in frames[:6]] == [0] * 6

    # The number drawn is the JSON entry's track (predict draws the entries themselves), else the index.
    entry = {"track": ids[3], **tracked[3][1].to_dict()}
    assert face_label(entry, 0) == "1" and face_label(tracked[3][1], 0) == "0"


def test_truncated_video_is_detected_against_the_container_count(tmp_path):
    from cfdrnn_keras.runtime.video import is_truncated

    path = tmp_path / "clip.avi"
    rng = np.random.default_rng(0)
    _write_video(path, [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(10)])
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 6 // 10])
    capture, info = open_video(cut)
    capture.release()
    read = len(list(read_frames(cut)))
    assert info.frame_count == 10 and read < 8 and is_truncated(read, info.frame_count)
    assert not is_truncated(10, 10) and not is_truncated(9, 10)  # one frame: the containers' estimate slack
    assert not is_truncated(7, 0)  # a stream that states no count cannot look truncated


def test_unreadable_and_odd_video_paths_are_one_line(tmp_path):
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoReadError, match="not a regular file"):
        open_video(fifo)  # and does not block reading a pipe
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    with pytest.raises(VideoReadError, match="broken symbolic link"):
        open_video(tmp_path / "dangling.mp4")
    with pytest.raises(VideoReadError, match="cannot read"):
        open_video(tmp_path / ("x" * 300 + ".mp4"))  # a name too long: an OSError from stat itself
