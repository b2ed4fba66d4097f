"""The commands that describe this install: info, presets and models."""

from __future__ import annotations

import json
from pathlib import Path

from cifarlab import __version__


def add_info(sub) -> None:
    p = sub.add_parser("info", help="device, torch version, data location and the models")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location to check")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from cifarlab.training.info import gather_info

    info = gather_info(args.data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"cifarlab {__version__}, torch {info['torch_version']}, device {info['device']} ({info['threads']} CPU threads)")
    print(f"amp auto: trains in {info['amp_auto']['dtype']} here ({info['amp_auto']['reason']})")
    print(f"data: {info['data']['location']}: {info['data']['status']}")
    print("models:")
    for name, params in info["models"].items():
        print(f"  {name:<12} {params:>12,} parameters")
    print("presets: " + ", ".join(info["presets"]))
    return 0


def add_presets(sub) -> None:
    p = sub.add_parser(
        "presets",
        help="the named recipes and every setting each resolves to",
        description="Show presets with all their settings (those a preset changes from the "
        "defaults are marked *). Any of them can be changed with train flags or --set.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="presets to show (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from cifarlab.training.config import TrainConfig, inactive_fields
    from cifarlab.training.presets import PRESETS, get_preset

    presets = {name: get_preset(name) for name in (args.names or PRESETS)}
    if args.json:
        print(json.dumps({name: c.to_dict() for name, c in presets.items()}, indent=2))
        return 0
    defaults = TrainConfig().to_dict()
    for n, (name, config) in enumerate(presets.items()):
        values = config.to_dict()
        unused = inactive_fields(values)
        print(("\n" if n else "") + f"{name}:")
        for key, value in values.items():
            if key not in unused:
                print(f"  {'*' if value != defaults[key] else ' '} {key:<20} {value!r}")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="the registered models: parameters and forward GFLOPs per image",
        description="List registered models with their parameter count and the GFLOPs of one forward "
        "pass on one 32x32 image, counted by torch.utils.flop_counter (convolutions and matrix products, "
        "2 FLOPs per multiply-add), with each model's default options.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON rows")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from cifarlab.models import ModelError, list_models
    from cifarlab.models.measure import describe_models

    unknown = [n for n in args.names if n not in list_models()]
    if unknown:
        raise ModelError(f"unknown model {unknown[0]!r}; known models: {', '.join(list_models())}")
    rows = describe_models(args.names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<16} {'parameters':>12} {'GFLOPs':>8}")
    for row in rows:
        print(f"{row['model']:<16} {row['parameters']:>12,} {row['gflops']:>8.3f}")
    return 0
