import { defineConfig } from "vite";

// Relative asset paths: the built app works wherever the server mounts it.
// The dev server proxies the API to a `segloop serve` on port 8765.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 4000, sourcemap: false },
  server: { proxy: { "/api": { target: "http://127.0.0.1:8765", ws: true } } },
});
