"""Write ../unifeed/serve/static/airports.json from the `airportsdata` package.

Airports with an IATA code (the ones with scheduled service, about 7,900), as
``{"source": ..., "fields": [...], "airports": [[icao, iata, name, lon, lat], ...]}`` with
coordinates rounded to 1e-3 degree (about 100 m); the page turns it into GeoJSON.
Run with a Python that has airportsdata installed: pip install airportsdata.
"""

import json
from importlib.metadata import files, version
from pathlib import Path

import airportsdata

OUT = Path(__file__).resolve().parent.parent / "unifeed" / "serve" / "static" / "airports.json"


def main() -> None:
    airports = airportsdata.load("ICAO")
    features = []
    for icao, a in sorted(airports.items()):
        if not a.get("iata"):
            continue
        features.append([icao, a["iata"], a["name"], round(a["lon"], 3), round(a["lat"], 3)])
    body = {
        "source": f"airportsdata {version('airportsdata')} (MIT)",
        "fields": ["icao", "iata", "name", "lon", "lat"],
        "airports": features,
    }
    OUT.write_text(json.dumps(body, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
    licence = next(p for p in files("airportsdata") or [] if p.name == "LICENSE")
    (OUT.parent / "LICENSE-airportsdata.txt").write_text(
        f"airports.json is derived from airportsdata {version('airportsdata')} (MIT):\n\n"
        + licence.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    print(f"{OUT.name}: {len(features)} airports, {OUT.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
