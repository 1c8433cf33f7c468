"""The toy world's parameters on command lines: ``--num-captions`` ... options for the commands that measure on a world
(``python -m streamr1.toy.tilt``, ``python -m streamr1.toy.quality``), and the ``streamr1 fit`` overrides that put the
recipe's teacher, evaluator and prompts on that world."""

from __future__ import annotations

from typing import Any

from streamr1 import toy
from streamr1.toy.world import SHAPE_RADIUS, WORLD_DEFAULTS


def add_world_arguments(parser: Any) -> None:
    """``--num-captions``, ``--videos-per-caption``, ``--good-per-caption``, ``--world-seed`` and the rendering options
    ``--starts-per-caption``, ``--shape-radius``, ``--travel-scale`` on an ``argparse`` parser: the exact world's
    parameters (defaults: the recipe's, :data:`streamr1.toy.WORLD`), for commands that measure on another world
    (``python -m streamr1.toy.tilt``, ``python -m streamr1.toy.quality``)."""
    group = parser.add_argument_group("world (default: the recipe's, streamr1.toy.WORLD)")
    group.add_argument("--num-captions", type=int, default=toy.WORLD["num_captions"], help="exact captions")
    group.add_argument("--videos-per-caption", type=int, default=toy.WORLD["videos_per_caption"])
    group.add_argument("--good-per-caption", type=int, default=toy.WORLD["good_per_caption"],
                       help="good videos a caption (the good proportion is this over --videos-per-caption)")
    group.add_argument("--world-seed", type=int, default=toy.WORLD["seed"])
    group.add_argument("--starts-per-caption", type=int, default=toy.WORLD.get("starts_per_caption"),
                       help="distinct start positions a caption (its flawed videos corrupt the same bases); "
                            "default: one for every video")
    group.add_argument("--shape-radius", type=float, default=toy.WORLD.get("shape_radius", SHAPE_RADIUS),
                       help="shape radius as a fraction of the frame")
    group.add_argument("--travel-scale", type=float, default=toy.WORLD.get("travel_scale", 1.0),
                       help="factor on the distance a shape travels over the clip")


def world_from_arguments(args: Any) -> dict[str, Any]:
    """The :class:`ToyWorld` keyword arguments :func:`add_world_arguments` parsed (the recipe's size)."""
    world = {**toy.WORLD, "num_captions": args.num_captions, "videos_per_caption": args.videos_per_caption,
             "good_per_caption": args.good_per_caption, "seed": args.world_seed}
    for key in ("starts_per_caption", "shape_radius", "travel_scale"):
        value, default = getattr(args, key), toy.WORLD.get(key, WORLD_DEFAULTS[key])
        if key in toy.WORLD or value != default:
            world[key] = value
    return world


def world_flags(world: dict[str, Any]) -> str:
    """`` --num-captions 4 --shape-radius 0.22``: the :func:`add_world_arguments` options that make ``world`` from the
    recipe's (empty for the recipe's own world), so a command line can name the world it ran on."""
    names = {"num_captions": "num-captions", "videos_per_caption": "videos-per-caption",
             "good_per_caption": "good-per-caption", "seed": "world-seed", "starts_per_caption": "starts-per-caption",
             "shape_radius": "shape-radius", "travel_scale": "travel-scale"}
    unknown = set(world) - set(names) - {"size"}
    if unknown or world.get("size", toy.WORLD["size"]) != toy.WORLD["size"]:
        raise ValueError(f"No command-line option makes the world keys {sorted(unknown) or ['size']} of {world}.")
    out = ""
    for key, flag in names.items():
        value, default = world.get(key, WORLD_DEFAULTS.get(key)), toy.WORLD.get(key, WORLD_DEFAULTS.get(key))
        if value != default:
            if value is None:
                raise ValueError(f"No command-line option sets {key} back to null (the recipe's is {default}).")
            out += f" --{flag} {value}"
    return out


def world_overrides(world: dict[str, Any]) -> list[str]:
    """``streamr1 fit`` arguments that put the recipe's teacher, evaluator and prompts on ``world`` (exact-layout
    :class:`~streamr1.toy.world.ToyWorld` arguments); none for the recipe's own world. The shipped student and critic
    were made on the recipe's world: on another one they start off its distribution."""
    if world == toy.WORLD:
        return []
    if world.get("size", toy.WORLD["size"]) != toy.WORLD["size"]:
        raise ValueError(f"The quality table runs the recipe's {toy.WORLD['size']}x{toy.WORLD['size']} student; "
                         f"world size {world['size']} needs other assets.")
    out = []
    for key in sorted(set(world) - {"size"}):
        value = "null" if world[key] is None else str(world[key])
        for part in ("teacher", "evaluator"):
            out += [f"--model.{part}.init_args.{key}", value]
    return out + ["--data.init_args.num_captions", str(world["num_captions"]),
                  "--data.init_args.world_seed", str(world["seed"])]
