"""Zone names across providers, mapped explicitly to the zones of the embedded profile.

A provider names its areas its own way: NESO's regions ``GB-1`` … ``GB-18``, WattTime's
sub-regions of a balancing authority (``CAISO_NORTH``, ``PJM_NJ``), Electricity Maps' zones
(``US-CAL-CISO``). When the provider fails, the embedded profile stands in for the area it
lies inside; this table says which, and why. A name not listed is not guessed (a prefix
alone would map ``GB-NIR`` — Northern Ireland, another grid — to Great Britain): it fails
with UnknownZone.

Sources:

- NESO Carbon Intensity API, regional endpoints (carbon-intensity.github.io/api-definitions,
  "Region IDs"): 1–14 are the DNO regions of Great Britain, 15 England, 16 Scotland,
  17 Wales, 18 GB — all inside the GB transmission system the GB profile was fitted to.
- WattTime v3 regions (``/v3/my-access`` and ``/v3/region-from-loc`` answer a region
  abbreviation with its full name, e.g. ``CAISO_NORTH`` "California ISO - North"): the
  CAISO_* and PJM_* regions are sub-areas of the CAISO and PJM balancing authorities. The
  names listed are those WattTime's region maps give for the two (as also tabulated by
  client code mapping WattTime regions to ISOs).
- Electricity Maps zones are EIA balancing-authority areas: ``US-CAL-CISO`` is the
  California ISO, ``US-MIDA-PJM`` PJM Interconnection (app.electricitymaps.com zone pages).

The profile is an *average* (life-cycle) intensity; a WattTime region's signal is
*marginal*. The chain says so when one stands in for the other (``meta["kind_changed"]``).
"""
from __future__ import annotations

from dataclasses import dataclass

_NESO = "NESO region {n} ({name}) lies in the GB transmission system"
_NESO_REGIONS = {
    1: "North Scotland", 2: "South Scotland", 3: "North West England", 4: "North East England",
    5: "Yorkshire", 6: "North Wales & Merseyside", 7: "South Wales", 8: "West Midlands", 9: "East Midlands",
    10: "East England", 11: "South West England", 12: "South England", 13: "London", 14: "South East England",
    15: "England", 16: "Scotland", 17: "Wales", 18: "GB",
}
_WT = "WattTime region {name}: a sub-area of the {ba} balancing authority ({zone})"
_WATTTIME_REGIONS = {
    "US-CAL-CISO": ("CAISO", ("CAISO_NORTH", "CAISO_ESCONDIDO", "CAISO_LONGBEACH", "CAISO_PALMSPRINGS",
                              "CAISO_REDDING", "CAISO_SANBERNARDINO", "CAISO_SANDIEGO")),
    "US-MIDA-PJM": ("PJM", ("PJM_CHICAGO", "PJM_DC", "PJM_EASTERN_KY", "PJM_EASTERN_OH", "PJM_NJ", "PJM_ROANOKE",
                            "PJM_SOUTHWEST_OH", "PJM_WESTERN_KY")),
}

#: another provider's name → (embedded profile zone, why)
ZONE_MAP: dict[str, tuple[str, str]] = {
    "DE-LU": ("DE", "Germany-Luxembourg bidding zone: the German grid (Electricity Maps/ENTSO-E name)"),
    "UK": ("GB", "WattTime's and common name for Great Britain"),
    "GB-national": ("GB", "NESO's national series"),
    "CAISO": ("US-CAL-CISO", "the California ISO balancing authority (WattTime's name)"),
    "PJM": ("US-MIDA-PJM", "the PJM Interconnection balancing authority (WattTime's name)"),
    **{f"GB-{n}": ("GB", _NESO.format(n=n, name=name)) for n, name in _NESO_REGIONS.items()},
    **{r: (zone, _WT.format(name=r, ba=ba, zone=zone))
       for zone, (ba, regions) in _WATTTIME_REGIONS.items() for r in regions},
}


@dataclass(frozen=True)
class ZoneMapping:
    zone: str        # as asked
    profile: str     # the embedded profile's zone serving it
    why: str         # "" when it is the profile's own zone


def profile_zone(zone: str, profiles: set[str] | frozenset[str]) -> ZoneMapping | None:
    """The profile zone serving ``zone`` (itself, or by ZONE_MAP), None when none does."""
    if zone in profiles:
        return ZoneMapping(zone, zone, "")
    hit = ZONE_MAP.get(zone)
    if hit is None or hit[0] not in profiles:
        return None
    return ZoneMapping(zone, hit[0], hit[1])
