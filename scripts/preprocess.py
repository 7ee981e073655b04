"""Extract frames and mono audio from VIDEOS/<class>/<id>.<ext> into the SoP layout under --out.

    python scripts/preprocess.py --videos VIDEOS --out ROOT [--fps 8] [--audio_rate 11025] [--workers N]
                                 [--frame_size S]

Rerunning resumes: finished videos are skipped. Exit status 1 when any video failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.preprocess import FAILURES_FILE, find_videos, format_summary, preprocess_tree  # noqa: E402
from utils.cli import OneLineParser  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="preprocess.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", required=True, type=Path, help="folder of <class>/<id>.<mp4|mkv|webm|avi>")
    parser.add_argument("--out", required=True, type=Path, help="output root (frames/ and audio/ go here)")
    parser.add_argument("--fps", type=float, default=8, help="frames per second to extract")
    parser.add_argument("--audio_rate", type=int, default=11025, help="sample rate of the mono wav")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality, 1-100")
    parser.add_argument("--frame_size", type=int, default=None,
                        help="store frames with this shorter side in pixels, aspect kept (e.g. 256: less disk, faster "
                             "loading; --imgSize above S / 1.1 then upscales); default: the video's own size")
    args = parser.parse_args(argv)
    if not args.videos.is_dir():
        parser.error(f"--videos: no such directory: {args.videos}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder (frames/ and audio/ go into it)")
    if not args.fps > 0:
        parser.error(f"--fps must be positive, got {args.fps}")
    if args.audio_rate <= 0:
        parser.error(f"--audio_rate must be positive, got {args.audio_rate}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg_quality must be in 1..100, got {args.jpeg_quality}")
    if args.frame_size is not None and args.frame_size < 1:
        parser.error(f"--frame_size must be a positive number of pixels, got {args.frame_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not find_videos(args.videos):
        print(f"error: no videos found under {args.videos} (expected <class>/<id>.mp4|.mkv|.webm|.avi)",
              file=sys.stderr)
        return 1
    start = time.perf_counter()
    results = preprocess_tree(args.videos, args.out, args.fps, args.audio_rate, args.workers, args.jpeg_quality,
                              args.frame_size)
    elapsed = time.perf_counter() - start
    print(format_summary(results))
    print(f"{len(results)} videos in {elapsed:.1f} s ({len(results) / max(elapsed, 1e-9):.2f} videos/s); "
          f"failures and no-audio videos listed in {args.out / FAILURES_FILE}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
