// Reference features of nsfwjs 4.3.0's MobileNetV2, computed by TF.js itself, for
// tests/test_mobilenet_v2.py. Usage (the folder holds node_modules/ with nsfwjs and @tensorflow/tfjs):
//   npm install --prefix DIR @tensorflow/tfjs@4.22.0 ./nsfwjs-4.3.0.tgz
//   node tests/reference/mobilenet_v2_tfjs.js DIR tests/reference/mobilenet_v2_tfjs.json
// Each image goes through nsfwjs's own `NSFWJS.infer(image, endpoint)`: uint8-valued pixels / 255,
// resizeBilinear(alignCorners=true) to 224 unless already 224, the Keras model cut at `endpoint`.
// The images are integer formulas both sides compute exactly (see `pixel`).
"use strict";
const path = require("path");
const fs = require("fs");
const { createRequire } = require("module");

const [modulesDir, outPath] = process.argv.slice(2);
if (!modulesDir || !outPath) {
  throw new Error("usage: node mobilenet_v2_tfjs.js NODE_MODULES_PARENT_DIR OUT.json");
}
const load = createRequire(path.join(path.resolve(modulesDir), "noop.js"));
const tf = load("@tensorflow/tfjs");
const nsfwjs = load("nsfwjs");

const IMAGES = [
  { index: 0, size: 32 },
  { index: 1, size: 32 },
  { index: 2, size: 64 },
  { index: 3, size: 224 },
];
const POOL_LAYER = "block_10_depthwise_relu";
const SPATIAL_LAYER = "block_10_project_BN";
const SPATIAL_CHANNELS = 7;

// Pixel value in 0..255 of image k at row i, column j, channel c.
function pixel(k, i, j, c) {
  return (3 * i * (k + 1) + 5 * j + 40 * c + ((i * j * (k + 7)) % 53)) % 256;
}

function image(k, size) {
  const values = new Int32Array(size * size * 3);
  for (let i = 0; i < size; i++)
    for (let j = 0; j < size; j++)
      for (let c = 0; c < 3; c++) values[(i * size + j) * 3 + c] = pixel(k, i, j, c);
  return tf.tensor3d(values, [size, size, 3], "int32");
}

const round = (values) => Array.from(values, (v) => Number(v.toPrecision(9)));

async function main() {
  const model = await nsfwjs.load("MobileNetV2");
  const out = {
    generated_by: `nsfwjs ${JSON.parse(fs.readFileSync(path.join(modulesDir, "node_modules/nsfwjs/package.json"))).version}, @tensorflow/tfjs ${tf.version.tfjs}, backend ${tf.getBackend()}`,
    pixel: "(3 * i * (k + 1) + 5 * j + 40 * c + ((i * j * (k + 7)) % 53)) % 256",
    images: IMAGES,
    pool_layer: POOL_LAYER,
    spatial_layer: SPATIAL_LAYER,
    pool: [],
    spatial: [],
    spatial_mean: [],
  };
  for (const { index, size } of IMAGES) {
    const img = image(index, size);
    const hidden = model.infer(img, POOL_LAYER); // [1, 14, 14, 384]
    const block = model.infer(img, SPATIAL_LAYER); // [1, 14, 14, 96]
    out.pool.push(round(await hidden.mean([0, 1, 2]).data()));
    out.spatial_mean.push(round(await block.mean([0, 1, 2]).data()));
    const sliced = block.slice([0, 0, 0, 0], [1, -1, -1, SPATIAL_CHANNELS]);
    out.spatial.push(round(await sliced.data()));
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
}

main();
