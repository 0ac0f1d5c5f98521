// Builds the live map into ../unifeed/serve/static (committed; the Python package ships it).
// Run: npm ci && npm run build   (and python3 make_airports.py for airports.json)
import { build } from "esbuild";
import { copyFileSync, readFileSync, writeFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import * as topojson from "topojson-client";

const require = createRequire(import.meta.url);
const out = new URL("../unifeed/serve/static/", import.meta.url).pathname;
const common = { bundle: true, minify: true, target: ["es2022"], legalComments: "none", logLevel: "warning" };

await build({ ...common, entryPoints: ["src/main.js"], format: "esm", outfile: out + "app.js" });
await build({ ...common, entryPoints: ["src/feed-worker.js"], format: "iife", outfile: out + "feed-worker.js" });
await build({ ...common, entryPoints: ["src/app.css"], outfile: out + "app.css" });
copyFileSync(require.resolve("maplibre-gl/dist/maplibre-gl-worker.mjs"), out + "maplibre-gl-worker.mjs");

// Natural Earth 1:110m land and country borders (public domain), as GeoJSON with
// coordinates rounded to 0.01 degree (about 1 km, finer than the data itself).
const round = (key, value) => (typeof value === "number" ? Math.round(value * 100) / 100 : value);
const land = JSON.parse(readFileSync(require.resolve("world-atlas/land-110m.json"), "utf8"));
writeFileSync(out + "land.json", JSON.stringify(topojson.feature(land, land.objects.land), round));
const countries = JSON.parse(readFileSync(require.resolve("world-atlas/countries-110m.json"), "utf8"));
const borders = topojson.mesh(countries, countries.objects.countries, (a, b) => a !== b);
writeFileSync(out + "borders.json", JSON.stringify({ type: "Feature", properties: {}, geometry: borders }, round));

for (const name of ["app.js", "feed-worker.js", "app.css", "maplibre-gl-worker.mjs", "land.json", "borders.json"]) {
  console.log(`${name.padEnd(24)} ${(statSync(out + name).size / 1024).toFixed(0).padStart(6)} KiB`);
}
