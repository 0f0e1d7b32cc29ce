"""Linking one video's detections across sampled frames into tracks (ByteTrack-style).

    tracker = Tracker(TrackerSettings())
    for frame in frames:                       # in time order, one video
        track_ids = tracker.update(frame.time_s, boxes, scores, features)

Each `update` returns, for every detection of the frame, the id of the track it joins (ids count
from 0 within the video) or -1 for a low-score detection that joined no track.

The association follows ByteTrack (Zhang et al., ECCV 2022): a constant-velocity Kalman filter
predicts every track's box; high-score detections are matched first (Hungarian assignment on
1 - IoU), low-score detections then recover the tracks left over, and an unmatched high-score
detection starts a track. Two changes suit a search index fed sampled frames (2 fps by default,
where people move far between frames and IoU alone loses them):

- time steps are in seconds, not frames, so the filter and the "lost for too long" rule hold
  whatever the sampling rate, and a variable-frame-rate video is handled;
- when the detections' re-id features are given (the index computes them anyway), the cost
  mixes IoU with appearance; optionally (`min_similarity`) a pair whose appearance disagrees is
  never matched, and (`rejoin_similarity`) a detection that overlaps no predicted box rejoins a
  lost track of a same-looking person, as BoT-SORT and DeepSORT do. Both are off by default:
  on the synthetic world in motion, with a colour embedder, they merged different people
  (IDF1 0.93 against 0.998 with boxes alone; `experiments/video_tracking.py`); turn them on
  with a re-id net that separates people well.

The tracker is our own rather than a library's: the maintained Python implementations (Roboflow's
`trackers`, `supervision` before 0.26, `boxmot`) bring opencv-python, which clashes with the
headless OpenCV build this project installs, and a dozen more packages, for about 200 lines of
NumPy and SciPy. Its state is plain numbers (`state_dict` / `from_state`), so an indexing run
killed mid-video resumes with the same track ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from personsearch.boxes import box_iou
from personsearch.errors import ConfigError


@dataclass(frozen=True)
class TrackerSettings:
    high_score: float = 0.5  #: detections matched in the first stage (and able to start tracks)
    low_score: float = 0.1  #: detections below this are ignored; between: second stage only
    new_track_score: float = 0.6  #: an unmatched detection starts a track from this score
    min_iou: float = 0.2  #: first stage: pairs with less IoU (to the predicted box) never match
    low_min_iou: float = 0.5  #: second stage's stricter IoU
    #: features given: pairs less alike (cosine) than this never match (0: no gate)
    min_similarity: float = 0.0
    #: features given: a track rejoined on looks alone from this cosine (None: never). Off by
    #: default: with a weak embedder unrelated people look alike (see docs/search.md)
    rejoin_similarity: float | None = None
    max_lost_s: float = 3.0  #: a track unmatched for longer than this ends
    max_speed: float = 1.5  #: third stage: body heights per second a person can move (walking ~0.8)
    appearance_weight: float = 0.5  #: cost = (1 - w) (1 - IoU) + w (1 - cosine)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "rejoin_similarity" and value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(f"tracker setting {name}={value!r} must be a finite number")
        for name in (
            "high_score",
            "low_score",
            "new_track_score",
            "min_iou",
            "low_min_iou",
            "appearance_weight",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"tracker setting {name}={getattr(self, name)} must be in [0, 1]")
        if self.low_score > self.high_score:
            raise ConfigError(
                f"tracker low_score {self.low_score} is above high_score {self.high_score}"
            )
        if self.max_speed <= 0:
            raise ConfigError(f"tracker max_speed={self.max_speed} must be > 0 heights per second")
        if self.max_lost_s <= 0:
            raise ConfigError(f"tracker max_lost_s={self.max_lost_s} must be > 0 seconds")


# Kalman filter on (cx, cy, aspect w/h, h) and their velocities, in seconds. The noise scales
# with the box height, as in SORT / ByteTrack, so near and far people are treated alike; a person
# walks about one height per second, which sets the velocity's scale.
_MEASURE_STD = 0.05  #: a detected box's centre and height, in heights
_START_VELOCITY_STD = 1.0  #: heights per second: a new track's speed is unknown
_POSITION_DRIFT = 0.05  #: heights per sqrt(second): process noise on position
_VELOCITY_DRIFT = 0.5  #: heights per second per sqrt(second): people change pace and turn


@dataclass
class _Track:
    track_id: int
    mean: np.ndarray  # (8,)
    cov: np.ndarray  # (8, 8)
    last_time: float
    feature: np.ndarray | None = None  # running mean of the matched detections' features
    hits: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "mean": self.mean.tolist(),
            "cov": self.cov.tolist(),
            "last_time": self.last_time,
            "hits": self.hits,
            "feature": None if self.feature is None else self.feature.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Track:
        feature = data.get("feature")
        return cls(
            int(data["track_id"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["cov"], dtype=np.float64),
            float(data["last_time"]),
            None if feature is None else np.asarray(feature, dtype=np.float32),
            int(data["hits"]),
        )


def _to_xyah(box: np.ndarray) -> np.ndarray:
    width, height = box[2] - box[0], max(box[3] - box[1], 1e-6)
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, width / height, height])


def _to_xyxy(mean: np.ndarray) -> np.ndarray:
    cx, cy, aspect, height = mean[:4]
    width = aspect * height
    return np.array([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])


def _start(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.concatenate([_to_xyah(box), np.zeros(4)])
    height = mean[3]
    position = 2 * _MEASURE_STD * height
    velocity = _START_VELOCITY_STD * height
    std = [position, position, 1e-2, position, velocity, velocity, 1e-5, velocity / 4]
    return mean, np.diag(np.square(std))


def _predict(mean: np.ndarray, cov: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    motion = np.eye(8)
    motion[:4, 4:] = dt * np.eye(4)
    height = mean[3]
    # Process noise grows with the time step: a second-long gap is far less certain than 40 ms.
    position, velocity = _POSITION_DRIFT * height, _VELOCITY_DRIFT * height
    std = [position, position, 1e-2, position, velocity, velocity, 1e-5, velocity / 4]
    noise = np.diag(np.square(std)) * max(dt, 1e-3)
    return motion @ mean, motion @ cov @ motion.T + noise


def _correct(mean: np.ndarray, cov: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    measured = _to_xyah(box)
    height = mean[3]
    noise = np.diag(
        np.square([_MEASURE_STD * height, _MEASURE_STD * height, 1e-1, _MEASURE_STD * height])
    )
    projected_cov = cov[:4, :4] + noise
    gain = np.linalg.solve(projected_cov, cov[:4, :]).T  # (8, 4)
    mean = mean + gain @ (measured - mean[:4])
    cov = cov - gain @ projected_cov @ gain.T
    return mean, cov


def _centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) distance between box centres in heights of the `b` boxes, capped at 1."""
    centres_a = (a[:, :2] + a[:, 2:]) / 2
    centres_b = (b[:, :2] + b[:, 2:]) / 2
    heights = np.maximum(b[:, 3] - b[:, 1], 1e-6)
    distance = np.linalg.norm(centres_a[:, None] - centres_b[None], axis=2) / heights[None]
    return np.minimum(distance, 1.0)


def _assign(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one pairs among the allowed ones."""
    if cost.size == 0 or not allowed.any():
        return []
    rows, cols = linear_sum_assignment(np.where(allowed, cost, 1e6))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


@dataclass
class _Frame:
    """One `update`'s working state: the frame's detections and what is matched so far."""

    time_s: float
    boxes: np.ndarray
    features: np.ndarray | None
    ids: np.ndarray  #: track id per detection (-1: none yet)
    predicted: list[tuple[np.ndarray, np.ndarray]]  #: each track's predicted mean, covariance
    free_tracks: set[int]  #: indices of the tracks not matched yet in this frame


@dataclass
class Tracker:
    """Tracks of one video; call `update` once per sampled frame, in time order."""

    settings: TrackerSettings = field(default_factory=TrackerSettings)
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 0
    last_time: float | None = None

    def update(
        self,
        time_s: float,
        boxes: np.ndarray,
        scores: np.ndarray,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """The track id of each detection of the frame at `time_s` (-1: joined none)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all() and math.isfinite(time_s)):
            raise ValueError(f"non-finite box, score or time at t={time_s}")
        if features is not None:
            features = np.asarray(features, dtype=np.float32)
            features = features.reshape(len(boxes), features.shape[-1] if features.ndim else 0)
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            features = features / np.maximum(norms, 1e-12)
        if self.last_time is not None and time_s < self.last_time:
            raise ValueError(
                f"frame at {time_s:.3f} s comes before the last one "
                f"({self.last_time:.3f} s): feed frames in time order"
            )
        s = self.settings
        self._end_lost_tracks(time_s)
        frame = _Frame(
            time_s,
            boxes,
            features,
            np.full(len(boxes), -1, dtype=np.int64),
            [_predict(t.mean, t.cov, time_s - t.last_time) for t in self.tracks],
            set(range(len(self.tracks))),
        )
        high = np.flatnonzero(scores >= s.high_score)
        low = np.flatnonzero((scores >= s.low_score) & (scores < s.high_score))
        # Tracks seen in the previous frame are matched before lost ones (DeepSORT's cascade):
        # a lost track's predicted box drifts, and would otherwise take over a passer-by.
        self._match_by_iou(frame, high, s.min_iou, recent=True)
        self._match_by_iou(frame, high, s.min_iou, recent=False)
        self._match_by_iou(frame, low, s.low_min_iou, recent=True)
        self._match_by_distance(frame, high)
        self._rejoin_on_looks(frame, high)
        for det in high:
            if frame.ids[det] < 0 and scores[det] >= s.new_track_score:
                mean, cov = _start(boxes[det])
                feature = None if features is None else features[det].copy()
                self.tracks.append(_Track(self.next_id, mean, cov, time_s, feature))
                frame.ids[det] = self.next_id
                self.next_id += 1
        self.last_time = time_s
        return frame.ids

    def _open(
        self, frame: _Frame, candidates: np.ndarray, recent: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Still unmatched detections among `candidates`, and the free tracks (only those seen
        in the previous frame, or only those not, when `recent` says so)."""
        dets = np.array([d for d in candidates if frame.ids[d] < 0], dtype=np.int64)
        tracks = [
            t
            for t in sorted(frame.free_tracks)
            if recent is None or (self.tracks[t].last_time == self.last_time) == recent
        ]
        return dets, np.array(tracks, dtype=np.int64)

    def _gate_by_looks(
        self,
        frame: _Frame,
        dets: np.ndarray,
        tracks: np.ndarray,
        cost: np.ndarray,
        allowed: np.ndarray,
        weight: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mix appearance into a motion cost and refuse pairs less alike than min_similarity."""
        similarity = self._similarity(frame.features, dets, tracks)
        if similarity is None:
            return cost, allowed
        known = ~np.isnan(similarity)
        allowed = allowed & (~known | (similarity >= self.settings.min_similarity))
        mixed = (1 - weight) * cost + weight * (1 - similarity)
        return np.where(known, mixed, cost), allowed

    def _take(
        self, frame: _Frame, pairs: list[tuple[int, int]], dets: np.ndarray, tracks: np.ndarray
    ) -> None:
        """Each (detection row, track column) pair: the detection joins the track."""
        for row, col in pairs:
            index, det = int(tracks[col]), int(dets[row])
            self._join(index, det, frame)
            frame.ids[det] = self.tracks[index].track_id
            frame.free_tracks.discard(index)

    def _match_by_iou(
        self, frame: _Frame, candidates: np.ndarray, min_iou: float, recent: bool
    ) -> None:
        dets, tracks = self._open(frame, candidates, recent)
        if not len(dets) or not len(tracks):
            return
        track_boxes = np.array([_to_xyxy(frame.predicted[t][0]) for t in tracks]).reshape(-1, 4)
        iou = box_iou(frame.boxes[dets], track_boxes)
        # IoU alone cannot tell apart two people crossing at the same depth (their boxes
        # overlap alike); the distance to each track's motion-predicted centre can.
        cost = 1.0 - iou + 0.5 * _centre_distance(frame.boxes[dets], track_boxes)
        cost, allowed = self._gate_by_looks(
            frame, dets, tracks, cost, iou >= min_iou, self.settings.appearance_weight
        )
        self._take(frame, _assign(cost, allowed), dets, tracks)

    def _similarity(
        self, features: np.ndarray | None, dets: np.ndarray, tracks: np.ndarray
    ) -> np.ndarray | None:
        """Cosine similarity of detections and tracks (NaN where a track has no feature)."""
        if features is None:
            return None
        out = np.full((len(dets), len(tracks)), np.nan)
        for col, index in enumerate(tracks):
            feature = self.tracks[index].feature
            if feature is not None:
                out[:, col] = features[dets] @ feature
        return out

    def _match_by_distance(self, frame: _Frame, high: np.ndarray) -> None:
        """Confident detections that overlap no predicted box, matched to the nearest track that
        a person of its size could have walked from since it was last seen.

        At a low sampling rate a walking person's consecutive boxes often do not overlap at all;
        distance in body heights, bounded by a walking speed, still tells who went where. Only
        tracks seen in the previous frame take part: a lost track's position is a guess."""
        s = self.settings
        dets, tracks = self._open(frame, high, recent=True)
        if not len(dets) or not len(tracks):
            return
        boxes = frame.boxes[dets]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        heights = boxes[:, 3] - boxes[:, 1]
        track_centres = np.array([frame.predicted[t][0][:2] for t in tracks])
        track_heights = np.array([max(frame.predicted[t][0][3], 1e-6) for t in tracks])
        gaps = np.array([frame.time_s - self.tracks[t].last_time for t in tracks])
        distance = np.linalg.norm(centres[:, None] - track_centres[None], axis=2) / track_heights
        ratio = heights[:, None] / track_heights[None]
        reach = s.max_speed * gaps[None] + 0.5  # half a height of slack: jitter, a start from rest
        allowed = (distance <= reach) & (ratio > 0.67) & (ratio < 1.5)
        cost, allowed = self._gate_by_looks(frame, dets, tracks, distance / reach, allowed, 0.5)
        self._take(frame, _assign(cost, allowed), dets, tracks)

    def _rejoin_on_looks(self, frame: _Frame, high: np.ndarray) -> None:
        """Unmatched confident detections rejoin free tracks of a person who looks the same."""
        if frame.features is None or self.settings.rejoin_similarity is None:
            return
        dets, tracks = self._open(frame, high)
        if not len(dets) or not len(tracks):
            return
        similarity = self._similarity(frame.features, dets, tracks)
        allowed = ~np.isnan(similarity) & (similarity >= self.settings.rejoin_similarity)
        pairs = _assign(1 - np.nan_to_num(similarity), allowed)
        for row, col in pairs:
            # The person reappeared elsewhere: restart the motion model at the new box.
            frame.predicted[int(tracks[col])] = _start(frame.boxes[dets[row]])
        self._take(frame, pairs, dets, tracks)

    def _join(self, index: int, det: int, frame: _Frame) -> None:
        track = self.tracks[index]
        mean, cov = frame.predicted[index]
        track.mean, track.cov = _correct(mean, cov, frame.boxes[det])
        track.last_time = frame.time_s
        track.hits += 1
        if frame.features is not None:
            # A slow running mean: one bad crop (occlusion, blur) barely moves a track's looks.
            feature = frame.features[det]
            new = feature if track.feature is None else 0.9 * track.feature + 0.1 * feature
            track.feature = (new / max(float(np.linalg.norm(new)), 1e-12)).astype(np.float32)

    def _end_lost_tracks(self, time_s: float) -> None:
        self.tracks = [t for t in self.tracks if time_s - t.last_time <= self.settings.max_lost_s]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on after the last frame fed (JSON-serialisable)."""
        return {
            "settings": asdict(self.settings),
            "next_id": self.next_id,
            "last_time": self.last_time,
            "tracks": [t.to_dict() for t in self.tracks],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tracker:
        try:
            return cls(
                TrackerSettings(**state["settings"]),
                [_Track.from_dict(t) for t in state["tracks"]],
                int(state["next_id"]),
                None if state["last_time"] is None else float(state["last_time"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"tracker state is malformed ({error})") from error


def track_all(
    times: np.ndarray,
    frame_of: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    features: np.ndarray | None = None,
    settings: TrackerSettings | None = None,
) -> np.ndarray:
    """Track ids for a whole video's detections given as flat arrays.

    `frame_of` (M,) is each detection's frame number, `times` (M,) its frame's time in seconds;
    detections are grouped by frame in any order. Returns (M,) int64 track ids (-1: no track).
    """
    tracker = Tracker(settings or TrackerSettings())
    ids = np.full(len(frame_of), -1, dtype=np.int64)
    order = np.lexsort((frame_of, times))  # by time, then frame: each frame's rows contiguous
    breaks = np.flatnonzero(np.diff(frame_of[order])) + 1
    for members in np.split(order, breaks) if len(order) else []:
        ids[members] = tracker.update(
            float(times[members[0]]),
            boxes[members],
            scores[members],
            None if features is None else features[members],
        )
    return ids


def one_hit_per_track(scores: np.ndarray, track_keys: np.ndarray) -> np.ndarray:
    """Indices of each track's best-scored detection, best track first.

    `track_keys` (M,) names each detection's track uniquely across the gallery (e.g. a video
    number x 2^32 + track id); a detection with no track (key < 0) stands alone, as its own hit.
    Ties go to the earlier detection, so the result is deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    track_keys = np.asarray(track_keys, dtype=np.int64)
    if scores.shape != track_keys.shape:
        raise ValueError(f"{scores.shape} scores but {track_keys.shape} track keys")
    order = np.lexsort((np.arange(len(scores)), -scores))  # best first, then earlier
    keyed = track_keys[order]
    alone = keyed < 0
    _, first = np.unique(keyed[~alone], return_index=True)
    keep = np.zeros(len(order), dtype=bool)
    keep[np.flatnonzero(~alone)[first]] = True
    keep[alone] = True
    return order[keep]
