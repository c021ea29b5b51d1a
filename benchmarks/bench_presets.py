"""What the flow presets cost and save: end-point error against the known motion of the demo's
synthetic clips (translate, rotate), and seconds per frame pair, each preset beside the default.

    .venv/bin/python benchmarks/bench_presets.py [--pairs 8] [--backend torch]

Each clip is decoded as a run would (ffmpeg, bilinear, the preset's short side), flow computed
with the preset's parameters; a flow at short side 128 is resized to 256 and doubled, so every
EPE is in pixels of the 256-side frame, inside a 16 px border (where texture enters the frame).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import cv2
import numpy as np

from flowprep.dataset.decode import DecodeConfig, decode_video
from flowprep.dataset.demo import SYNTHETIC, synthetic_clip, true_flow
from flowprep.flow.api import compute_flow, rgb_to_gray
from flowprep.flow.presets import PRESETS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8, help="frame pairs per clip (default: 8)")
    ap.add_argument("--backend", default="torch", help="flow backend (default: torch)")
    args = ap.parse_args()
    clips = ["translate", "rotate"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {c: synthetic_clip(c, tmp) for c in clips}
        for name, preset in PRESETS.items():
            side = preset.short_side or 256
            epes, secs, pairs = {}, 0.0, 0
            for c in clips:
                frames = decode_video(str(paths[c]), DecodeConfig(short_side=side))[: args.pairs + 1]
                gray = rgb_to_gray(frames)
                t0 = time.perf_counter()
                flow = compute_flow(gray, backend=args.backend, device="cpu", **preset.resolved())
                secs += time.perf_counter() - t0
                pairs += len(flow)
                h, w = 256, 320
                if side != 256:
                    scale = 256 / side
                    flow = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) * scale for f in flow])
                truth = true_flow(SYNTHETIC[c], h, w)
                m = 16
                err = np.hypot(*(flow - truth)[:, m:-m, m:-m].transpose(3, 0, 1, 2))
                epes[c] = float(err.mean())
            rows.append((name, side, epes, secs / pairs))
    base = rows[0][3]
    print(
        f"{'preset':<12} {'side':>4} "
        + " ".join(f"{'EPE ' + c:>14}" for c in clips)
        + f" {'s/pair':>8} {'x default':>9}"
    )
    for name, side, epes, spp in rows:
        print(
            f"{name:<12} {side:>4} "
            + " ".join(f"{epes[c]:>11.3f} px" for c in clips)
            + f" {spp:>8.3f} {spp / base:>9.3f}"
        )


if __name__ == "__main__":
    main()
