// Bundles the /view page into dist/: app.js and app.css (xterm.js, its fit addon and our
// sources, nothing fetched at run time) and view.html. The relay embeds dist/ when it is built
// (relay/build.rs); scripts/build-web.sh runs this after `npm ci`.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  outdir: "dist",
  legalComments: "eof",
  logLevel: "warning",
});
copyFileSync("src/view.html", "dist/view.html");
