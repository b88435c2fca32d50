"""Monocular videos for cross-pose pairs:

    ROOT/<name>.mp4     (any container/codec FFmpeg decodes: .mp4, .mov, .mkv, .avi, .webm)
    ROOT/<name>.json    the person's box per frame: {"<frame index>": [x, y, w, h], ...}, frame index
                        counted from 0 at the video's own frame rate (what trackers write); frames
                        without a box (or null) are skipped

Frames are decoded with PyAV (FFmpeg) at `--fps` (time k / fps seconds, nearest decoded frame;
the box is the one of that frame). One video is one person and one camera; `--times`
consecutive samples make a group, time index 0..times-1. The intrinsics are unknown, so a
default is stored and flagged in group.json: focal = max(width, height) px, principal point at
the image centre ((W - 1) / 2, (H - 1) / 2: pixel centres at integers), R = I, t = 0.
"""

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from PIL import Image

from crocoman.convert.common import (
    SkipSample,
    add_pair_arguments,
    encode_pair_group,
    pair_settings,
    run_pair_conversion,
    split_by_name,
    windows,
)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
ASSUMED_INTRINSICS = "assumed: focal = max(W, H) px, principal point at the image centre, R = I, t = 0"


def _av() -> ModuleType:
    """PyAV, imported when a video is read (only the video converters need it)."""
    try:
        import av
    except ImportError as error:
        raise ImportError("reading videos needs PyAV: pip install av") from error
    return av


def video_info(path: Path) -> tuple[float, float, int, int]:
    """(duration in seconds, frame rate, width, height) from the container header, no decoding."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
            width, height = stream.codec_context.width, stream.codec_context.height
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"{path} is not a readable video ({error}); re-encode it or remove it from --root") from error
    if not rate or not duration:
        raise ValueError(f"{path}: the container gives no frame rate or duration ({rate} fps, {duration} s); "
                         f"re-mux it, e.g. ffmpeg -i {path.name} -c copy fixed.mp4")
    return duration, rate, width, height


def decode_frames(path: Path, times_s: Sequence[float]) -> dict[float, Image.Image]:
    """The frame shown at each time (seconds from the first frame): the first decoded frame
    whose timestamp reaches the time minus half a frame. One seek to the keyframe before the
    first time, then decoding forward; times past the end are absent from the result. A video
    FFmpeg cannot read is a counted skip."""
    av = _av()
    targets = iter(sorted(set(times_s)))
    target = next(targets)
    found: dict[float, Image.Image] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            start = stream.start_time or 0
            half_frame_s = 0.5 / float(stream.average_rate or stream.guessed_rate or 30)
            seek_s = max(target - 4 * half_frame_s, 0.0)
            container.seek(start + int(seek_s / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                time_s = float((frame.pts - start) * stream.time_base)
                while target is not None and time_s >= target - half_frame_s:
                    found[target] = frame.to_image()
                    target = next(targets, None)
                if target is None:
                    break
    except (av.error.FFmpegError, IndexError) as error:  # IndexError: no video stream
        raise SkipSample("unreadable video", f"{path}: {error}") from error
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second of video")


def default_intrinsics(width: int, height: int) -> list[list[float]]:
    focal_px = float(max(width, height))
    return [[focal_px, 0.0, (width - 1) / 2], [0.0, focal_px, (height - 1) / 2], [0.0, 0.0, 1.0]]


def encode_video_group(item: dict, size: int, margin: float) -> dict:
    """Decode the group's frames (in the worker), then encode it as every pair converter does."""
    images = decode_frames(item["video"], [frame["time_s"] for frame in item["frames"]])
    frames = [{**frame, "image": images.get(frame["time_s"]), "source": f"{item['video']}@{frame['time_s']:.3f}s"}
              for frame in item["frames"]]
    return encode_pair_group({**item, "frames": frames}, size, margin)


def video_groups(video: Path, fps: float, times: int, stride: int) -> list[dict]:
    """The group items of one video and its boxes file."""
    boxes_path = video.with_suffix(".json")
    if not boxes_path.is_file():
        raise FileNotFoundError(f"{boxes_path} is missing: each video needs its person boxes, "
                                f'{{"<frame index>": [x, y, w, h]}} (see convert video --help)')
    boxes = json.loads(boxes_path.read_text())
    duration_s, rate, width, height = video_info(video)
    K = default_intrinsics(width, height)
    samples = [k / fps for k in range(math.floor(duration_s * fps - 1e-9) + 1)]
    items = []
    for number, window in enumerate(windows(samples, times, stride)):
        frames = [{"time_s": time_s, "camera": "video", "time": time, "K": K, "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                   "t": [0, 0, 0], "box": boxes.get(str(round(time_s * rate)))} for time, time_s in enumerate(window)]
        items.append({"key": f"{video.stem}-{number:06d}", "subject": video.stem, "video": video,
                      "group": {"intrinsics": ASSUMED_INTRINSICS}, "frames": frames})
    return items


def convert(args: argparse.Namespace) -> dict:
    settings = pair_settings(args, "video", fps=args.fps)
    if args.fps <= 0:
        raise ValueError(f"convert video: --fps {args.fps} must be positive")
    videos = {path.stem: path for path in sorted(args.root.iterdir()) if path.suffix.lower() in VIDEO_SUFFIXES}
    if not videos:
        raise FileNotFoundError(f"{args.root} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    splits, unreadable = {}, []
    for split, chosen in split_by_name(videos, args.val, "video").items():
        splits[split] = []
        for video in chosen:
            try:
                splits[split] += video_groups(video, args.fps, args.times, args.stride)
            except ValueError as error:  # one broken file among thousands: listed, not fatal
                print(f"convert video: skipping {error}")
                unreadable.append(video.name)
    return run_pair_conversion(args, "video", splits, encode_video_group,
                               extra={"intrinsics": ASSUMED_INTRINSICS, "unreadable_videos": unreadable},
                               settings=settings)
