"""Which model a scene switch (core.scene_radiometry.SceneSwitch) picks for a raster, and why:
the raster is sampled as classify samples it for scene adaptation (up to 1024 tiles of the
first model's tile size, seed 0), and the JSON gives the distance, the threshold, the chosen
model and the per-statistic deviations (in spreads).

Usage (from the repository root)::

    .venv/bin/python bench/scene_switch_decision.py --scene scene.tif --switch models/X.scene_switch.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def decide(scene: str | Path, switch_path: str | Path) -> dict:
    from glassbox.core.adaptation import sample_scene_tiles
    from glassbox.core.io.raster import RasterSource
    from glassbox.core.models.choice import read_card
    from glassbox.core.scene_radiometry import SceneSwitch
    from glassbox.core.tiles.loop import plan_tiles

    switch = SceneSwitch.load(switch_path)
    card = read_card(switch.like_training)
    with RasterSource(str(scene), None, card.bands, None) as source:
        plan = plan_tiles(source, card, None, None, None)
        inputs, planned = sample_scene_tiles(plan, card)
    chosen, distance, reason = switch.choose(inputs)
    reference = switch.reference
    deviations = reference.deviations(inputs)
    return {"scene": Path(scene).name, "switch": Path(switch_path).name, "sampled_tiles": int(len(inputs)),
            "planned_tiles": int(planned), "distance": round(distance, 2), "threshold": round(reference.threshold, 2),
            "model": chosen.name, "reason": reason,
            "deviations": {name: round(float(v), 2) for name, v in zip(reference.names, deviations)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", required=True, help="raster with the bands the switch's models read")
    p.add_argument("--switch", required=True, help="<model>.scene_switch.json")
    args = p.parse_args(argv)
    print(json.dumps(decide(args.scene, args.switch), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
