"""Named flow presets: a TV-L1 parameter set (over ``DEFAULT_TVL1_PARAMS``) and, for ``preview``,
the decode short side it is meant for.  Pure data and lookups; no I/O.

A recipe names one with ``[flow] preset = "NAME"``; ``[flow.params]`` then overrides single
parameters on top of it, and a preset's ``short_side`` applies only when the recipe's ``[decode]``
sets none.  ``flowprep run DIR|VIDEO --preset NAME`` writes the same key into the generated
recipe.  The preset's name is part of the store's settings fingerprint, so a store built with
``preview`` is never topped up by a default run.

* ``i3d``: flowprep's defaults (``DEFAULT_TVL1_PARAMS``, scale step 0.5 for large motion).
* ``opencv-cuda``: what denseflow and mmaction2 compute, ``cv::cuda::OpticalFlowDual_TVL1``'s
  defaults (tau 0.25, lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01, 300 iterations,
  scale step 0.8, gamma 0): the CUDA solver has no median filter and one loop of 300 iterations,
  which is the CPU scheme's 10 outer x 30 inner iterations with median filtering off (with the
  filter off, the outer loop does nothing else; both stop on the same epsilon test).
* ``preview``: a cheap look at a data set end to end before the real run: short side 128,
  3 scales, 2 warps, 3 x 10 iterations.  ``benchmarks/bench_presets.py`` measures what it costs
  in accuracy against the default (README "A quick look first").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flowprep.flow.api import resolve_params


@dataclass(frozen=True, kw_only=True)
class FlowPreset:
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)  # TV-L1 parameters that differ from DEFAULT_TVL1_PARAMS
    short_side: int | None = None  # decode short side it is meant for; None = the recipe's
    summary: str = ""  # one line for --help and `flowprep recipes`

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def resolved(self) -> dict[str, Any]:
        """Every TV-L1 parameter of this preset (defaults filled in, checked)."""
        return resolve_params(self.params)


PRESETS: Mapping[str, FlowPreset] = MappingProxyType(
    {
        p.name: p
        for p in (
            FlowPreset(
                name="i3d",
                summary="flowprep's defaults: OpenCV's TV-L1 with scale step 0.5 (follows motion up to the 20 px bound)",
            ),
            FlowPreset(
                name="opencv-cuda",
                params={"scale_step": 0.8, "inner_iterations": 30, "outer_iterations": 10, "median_filtering": 1},
                summary="OpenCV CUDA's defaults, as denseflow / mmaction2 (scale step 0.8, 300 iterations, no median filter)",
            ),
            FlowPreset(
                name="preview",
                params={"nscales": 3, "warps": 2, "inner_iterations": 10, "outer_iterations": 3},
                short_side=128,
                summary="a quick look: short side 128, 3 scales, 2 warps, 30 iterations (not for training a model you keep)",
            ),
        )
    }
)


def get_preset(name: str) -> FlowPreset:
    """The preset called ``name``; ValueError names the known ones."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown flow preset {name!r}; known: {', '.join(PRESETS)}") from None


def preset_params(name: str | None, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The TV-L1 parameters a recipe asks for: ``name``'s preset (None: the defaults) with
    ``params`` on top; unchecked (``resolve_params`` checks them)."""
    base = dict(get_preset(name).params) if name is not None else {}
    return {**base, **dict(params or {})}


def parse_flow_params(items: list[str]) -> dict[str, int | float | bool]:
    """``["warps=2", "scale_step=0.5"]`` -> ``{"warps": 2, "scale_step": 0.5}`` (``--flow-param``;
    the names and ranges are checked by ``resolve_params``)."""
    out: dict[str, int | float | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--flow-param {item!r}: expected KEY=VALUE, e.g. warps=5")
        v = value.strip()
        if v.lower() in ("true", "false"):
            out[key.strip()] = v.lower() == "true"
            continue
        try:
            out[key.strip()] = int(v)
        except ValueError:
            try:
                out[key.strip()] = float(v)
            except ValueError:
                raise ValueError(f"--flow-param {item!r}: {v!r} is not a number or true/false") from None
    return out
