"""Visual themes of the procedural world: palettes, light, fog and which objects grow there.

Colours are RGB in [0, 1]. A theme fixes the look; the scene seed fixes everything random inside it
(layout, sun azimuth, exact colours).
"""
from __future__ import annotations

from dataclasses import dataclass

Rgb = tuple[float, float, float]

# Object families a theme can scatter; sim/world.py builds each from primitives.
OBJECT_FAMILIES = ("round_tree", "fir_tree", "rock", "boulder", "crate", "pillar", "cone", "ball", "cactus", "hut")


@dataclass(frozen=True)
class Theme:
    name: str
    sky_zenith: Rgb
    sky_horizon: Rgb
    sun_color: Rgb
    sun_elevation_deg: tuple[float, float]  # range the seed draws from
    ambient: float  # share of light that is not direct sun
    ground: Rgb  # main ground material
    ground_patch: Rgb  # large patches (grass clumps, darker sand, ...)
    ground_path: Rgb  # winding paths
    pebble: Rgb
    fog_density: float  # 1/m of exponential fog on top of the horizon haze
    objects: dict[str, float]  # family -> relative frequency
    palette: tuple[Rgb, ...]  # colours of man-made objects (crates, pillars, balls, cones)
    foliage: tuple[Rgb, ...] = ((0.20, 0.42, 0.16),)
    rock: Rgb = (0.45, 0.44, 0.42)
    wood: Rgb = (0.36, 0.24, 0.14)
    density: float = 1.0 / 55.0  # objects per square metre
    clouds: float = 0.5  # cloud cover in [0, 1]
    grain: float = 0.3  # contrast of the fine ground detail (grass blades, sand grains)
    exposure: float = 1.0  # scales all light

    def __post_init__(self) -> None:
        colours = [self.sky_zenith, self.sky_horizon, self.sun_color, self.ground, self.ground_patch, self.ground_path,
                   self.pebble, self.rock, self.wood, *self.palette, *self.foliage]
        for c in colours:
            if len(c) != 3 or not all(0.0 <= v <= 1.0 for v in c):
                raise ValueError(f"theme {self.name!r}: colour {c} is not RGB in [0, 1]")
        lo, hi = self.sun_elevation_deg
        if not 0.0 < lo <= hi < 90.0:
            raise ValueError(f"theme {self.name!r}: sun elevation range {self.sun_elevation_deg} must lie in (0, 90)")
        unknown = set(self.objects) - set(OBJECT_FAMILIES)
        if unknown or not self.objects or min(self.objects.values()) <= 0:
            raise ValueError(f"theme {self.name!r}: bad object families {self.objects} (known: {OBJECT_FAMILIES})")
        if (not 0.0 <= self.ambient <= 1.0 or self.fog_density < 0 or self.density <= 0 or not 0 <= self.clouds <= 1
                or not 0 <= self.grain < 1 or not 0 < self.exposure <= 3):
            raise ValueError(f"theme {self.name!r}: ambient={self.ambient}, fog={self.fog_density}, "
                             f"density={self.density}, clouds={self.clouds}, grain={self.grain} out of range")
        if not self.palette or not self.foliage:
            raise ValueError(f"theme {self.name!r}: palette and foliage must not be empty")


THEMES: dict[str, Theme] = {
    "meadow": Theme(
        name="meadow",
        sky_zenith=(0.22, 0.45, 0.85), sky_horizon=(0.72, 0.83, 0.95), sun_color=(1.0, 0.96, 0.88),
        sun_elevation_deg=(35.0, 60.0), ambient=0.38,
        ground=(0.30, 0.52, 0.20), ground_patch=(0.42, 0.60, 0.22), ground_path=(0.62, 0.52, 0.36),
        pebble=(0.55, 0.55, 0.52), fog_density=0.004,
        objects={"round_tree": 3.0, "fir_tree": 1.5, "rock": 2.0, "boulder": 1.0, "crate": 1.0, "pillar": 0.6,
                 "ball": 0.6, "cone": 0.4, "hut": 0.4},
        palette=((0.80, 0.20, 0.15), (0.90, 0.75, 0.20), (0.25, 0.35, 0.80), (0.85, 0.85, 0.82), (0.65, 0.30, 0.60)),
        foliage=((0.18, 0.42, 0.14), (0.28, 0.50, 0.16), (0.14, 0.34, 0.18)),
    ),
    "desert": Theme(
        name="desert",
        sky_zenith=(0.30, 0.52, 0.88), sky_horizon=(0.86, 0.84, 0.78), sun_color=(1.0, 0.95, 0.85),
        sun_elevation_deg=(40.0, 70.0), ambient=0.32,
        ground=(0.86, 0.70, 0.46), ground_patch=(0.78, 0.58, 0.36), ground_path=(0.92, 0.82, 0.62),
        pebble=(0.55, 0.38, 0.26), fog_density=0.003,
        objects={"cactus": 2.5, "rock": 2.5, "boulder": 2.0, "pillar": 0.8, "cone": 1.0, "crate": 0.6, "hut": 0.4},
        palette=((0.75, 0.45, 0.30), (0.85, 0.80, 0.65), (0.55, 0.30, 0.20), (0.30, 0.55, 0.60)),
        foliage=((0.30, 0.52, 0.26), (0.36, 0.58, 0.30)),
        rock=(0.66, 0.42, 0.28), density=1.0 / 70.0, clouds=0.15, grain=0.2,
    ),
    "snow": Theme(
        name="snow",
        sky_zenith=(0.50, 0.62, 0.80), sky_horizon=(0.86, 0.89, 0.93), sun_color=(1.0, 0.97, 0.92),
        sun_elevation_deg=(15.0, 35.0), ambient=0.5,
        ground=(0.90, 0.92, 0.96), ground_patch=(0.80, 0.84, 0.92), ground_path=(0.70, 0.70, 0.72),
        pebble=(0.35, 0.35, 0.38), fog_density=0.012,
        objects={"fir_tree": 4.0, "rock": 1.5, "boulder": 1.0, "crate": 0.5, "cone": 0.5, "ball": 0.5, "hut": 0.4},
        palette=((0.70, 0.15, 0.15), (0.20, 0.30, 0.55), (0.55, 0.40, 0.25), (0.90, 0.60, 0.15)),
        foliage=((0.10, 0.28, 0.20), (0.14, 0.32, 0.22)),
        rock=(0.40, 0.40, 0.44), clouds=0.7, grain=0.12, exposure=1.2,
    ),
    "dusk": Theme(
        name="dusk",
        sky_zenith=(0.16, 0.16, 0.38), sky_horizon=(0.95, 0.55, 0.35), sun_color=(1.0, 0.62, 0.35),
        sun_elevation_deg=(6.0, 14.0), ambient=0.42,
        ground=(0.34, 0.36, 0.22), ground_patch=(0.44, 0.40, 0.24), ground_path=(0.58, 0.46, 0.36),
        pebble=(0.40, 0.36, 0.34), fog_density=0.01,
        objects={"round_tree": 2.0, "fir_tree": 2.0, "rock": 1.5, "boulder": 1.0, "pillar": 1.0, "crate": 1.0, "ball": 0.5},
        palette=((0.70, 0.70, 0.75), (0.55, 0.25, 0.25), (0.30, 0.40, 0.55), (0.85, 0.75, 0.55)),
        foliage=((0.18, 0.30, 0.14), (0.24, 0.34, 0.16)),
        clouds=0.5,
    ),
    "autumn": Theme(
        name="autumn",
        sky_zenith=(0.35, 0.50, 0.78), sky_horizon=(0.80, 0.82, 0.86), sun_color=(1.0, 0.92, 0.80),
        sun_elevation_deg=(25.0, 45.0), ambient=0.4,
        ground=(0.46, 0.40, 0.20), ground_patch=(0.62, 0.40, 0.16), ground_path=(0.52, 0.44, 0.36),
        pebble=(0.50, 0.48, 0.46), fog_density=0.008,
        objects={"round_tree": 4.0, "fir_tree": 1.0, "rock": 1.5, "crate": 0.8, "pillar": 0.5, "ball": 0.4, "hut": 0.5},
        palette=((0.55, 0.20, 0.12), (0.85, 0.70, 0.30), (0.30, 0.35, 0.45)),
        foliage=((0.85, 0.45, 0.10), (0.78, 0.25, 0.10), (0.90, 0.70, 0.15), (0.40, 0.45, 0.15)),
        clouds=0.6,
    ),
}
