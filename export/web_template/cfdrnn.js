/**
 * cfdrnn.js: 68 facial landmarks (300-W markup) in the browser, as `LandmarkDetector` finds them in Python.
 *
 *     import {detect, loadImage, drawFaces} from "./cfdrnn.js";
 *     const photo = await loadImage("photo.jpg");        // or an <img>, <video>, <canvas>, ImageData
 *     const result = await detect(photo);               // {width, height, faces, ms_per_face, ...}
 *     for (const face of result.faces) face.box, face.points, face.confidence, face.score;
 *     drawFaces(canvas, photo, result.faces);
 *
 * `detect` loads everything once, from the folder this file is in (model.json, models/, litert/),
 * and runs on the CPU through LiteRT.js's WebAssembly runtime: nothing is fetched from anywhere else.
 * `createLandmarker({base})` gives an object of one's own (several models, another folder).
 *
 * What it does, step by step, each one mirroring the Python function named beside it:
 *  1. faces: BlazeFace full range on the photo letterboxed to 192² (and on half-size tiles of big
 *     photos), anchors decoded, MediaPipe's weighted NMS, boxes calibrated to the 68-point-box
 *     convention                                   (cfdrnn_keras detector: BlazeFace, FaceDetector);
 *  2. crops: the box made square, × 1.25, mapped onto the S² crop, cut with OpenCV's bilinear warp
 *     and black outside the photo, after an area pre-shrink where the crop shrinks the photo > 2×
 *                                                  (data_pipelines.geometry: crop_matrix, warp_to_crop);
 *  3. the network on each uint8 crop: 68 points in crop pixels  (runtime TFLiteBackend);
 *  4. points back to the photo through the inverse crop matrix  (LandmarkDetector.detect).
 * Coordinates everywhere: 0-based pixel centres (pixel column i spans [i - 0.5, i + 0.5]).
 *
 * The pure functions (cropMatrix, warpToCrop, resizeArea, resizeLinear, detectorWindows, tileStarts,
 * decodeBlazeFace, weightedNms, calibrateBox, ...) are exported too and need no browser.
 */

const HERE = new URL(".", import.meta.url);
const NUM_LANDMARKS = 68;
const f32 = Math.fround;

// ------------------------------------------------------------------------------------------------
// Numbers as Python and OpenCV round them
// ------------------------------------------------------------------------------------------------
/** Round half to even: Python's round(), numpy's rint, OpenCV's cvRound (lrint). */
export function roundHalfEven(v) {
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

const clampByte = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);

// ------------------------------------------------------------------------------------------------
// Images: {data, width, height, channels}; channels 4 (RGBA from a canvas) or 3 (RGB); only R, G, B are read
// ------------------------------------------------------------------------------------------------
/**
 * Decode an image file (URL, path relative to the page, Blob or File) into an ImageBitmap without
 * colour management, as OpenCV reads files (ICC profiles ignored). EXIF orientation is applied, as
 * tools/predict.py does for photos.
 */
export async function loadImage(source) {
  let blob = source;
  const name = typeof source === "string" || source instanceof URL ? String(source) : (source?.name ?? "image");
  if (!(source instanceof Blob)) {
    let response;
    try {
      response = await fetch(source);
    } catch (error) {
      throw new Error(`${name}: cannot load the image (${error.message})`);
    }
    if (!response.ok) throw new Error(`${name}: cannot load the image (HTTP ${response.status})`);
    blob = await response.blob();
  }
  try {
    return await createImageBitmap(blob, {colorSpaceConversion: "none", premultiplyAlpha: "none",
                                          imageOrientation: "from-image"});
  } catch (error) {
    throw new Error(`${name}: not an image, or a corrupt one (${blob.type || "unknown type"}, ${blob.size} bytes)`);
  }
}

/** The RGBA pixels of anything drawable (ImageBitmap, <img>, <video>, <canvas>) or ImageData-like object. */
export function imagePixels(source) {
  if (source && source.data && source.width && source.height) {
    const channels = source.channels ?? Math.round(source.data.length / (source.width * source.height));
    return {data: source.data, width: source.width, height: source.height, channels};
  }
  const width = source.videoWidth || source.naturalWidth || source.width;
  const height = source.videoHeight || source.naturalHeight || source.height;
  if (!width || !height) throw new Error("the image has no pixels (not loaded yet?)");
  const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement("canvas"), {width, height});
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(source, 0, 0, width, height);
  const pixels = context.getImageData(0, 0, width, height);
  return {data: pixels.data, width, height, channels: 4};
}

// ------------------------------------------------------------------------------------------------
// Resizes, as cv2.resize does them on uint8 images
// ------------------------------------------------------------------------------------------------
/**
 * cv2.resize(INTER_AREA) of the region (rx, ry, rw, rh) of `image` to dw × dh, for shrinking only
 * (both factors ≥ 1, the only case the Python code uses). Mirrors OpenCV's resizeArea_: weights from
 * computeResizeAreaTab, sums in float32, rounded half to even; an exact integer factor takes
 * resizeAreaFast_ (the 2×2 SIMD kernel rounds half up). Returns RGB bytes (channels 3).
 */
export function resizeArea(image, rx, ry, rw, rh, dw, dh) {
  const {data, width, channels: cn} = image;
  const out = new Uint8Array(dw * dh * 3);
  const scaleX = 1 / (dw / rw), scaleY = 1 / (dh / rh);  // OpenCV: scale = 1 / inv_scale (double)
  const ix = roundHalfEven(scaleX), iy = roundHalfEven(scaleY);
  const at = (x, y) => ((ry + y) * width + (rx + x)) * cn;
  if (Math.abs(scaleX - ix) < Number.EPSILON && Math.abs(scaleY - iy) < Number.EPSILON) {
    const area = ix * iy, inv = f32(1 / area);
    for (let y = 0; y < dh; y++) {
      for (let x = 0; x < dw; x++) {
        for (let c = 0; c < 3; c++) {
          let sum = 0;
          for (let j = 0; j < iy; j++) for (let i = 0; i < ix; i++) sum += data[at(x * ix + i, y * iy + j) + c];
          out[(y * dw + x) * 3 + c] = area === 4 ? (sum + 2) >> 2 : clampByte(roundHalfEven(f32(sum * inv)));
        }
      }
    }
    return out;
  }
  const xtab = areaTable(rw, dw, scaleX), ytab = areaTable(rh, dh, scaleY);
  const buf = new Float32Array(dw * 3), sum = new Float32Array(dw * 3);
  let prev = ytab.length ? ytab[0][0] : 0;
  const flush = (dy) => {
    for (let k = 0; k < dw * 3; k++) out[dy * dw * 3 + k] = clampByte(roundHalfEven(sum[k]));
  };
  for (const [dy, sy, beta] of ytab) {
    buf.fill(0);
    for (const [dx, sx, alpha] of xtab) {
      const s = at(sx, sy), d = dx * 3;
      buf[d] = f32(buf[d] + f32(data[s] * alpha));
      buf[d + 1] = f32(buf[d + 1] + f32(data[s + 1] * alpha));
      buf[d + 2] = f32(buf[d + 2] + f32(data[s + 2] * alpha));
    }
    if (dy !== prev) {
      flush(prev);
      for (let k = 0; k < dw * 3; k++) sum[k] = f32(beta * buf[k]);
      prev = dy;
    } else {
      for (let k = 0; k < dw * 3; k++) sum[k] = f32(sum[k] + f32(beta * buf[k]));
    }
  }
  flush(prev);
  return out;
}

/** OpenCV's computeResizeAreaTab: [destination index, source index, float32 weight] triples. */
function areaTable(ssize, dsize, scale) {
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push([dx, sx1 - 1, f32((sx1 - fsx1) / cellWidth)]);
    for (let sx = sx1; sx < sx2; sx++) tab.push([dx, sx, f32(1 / cellWidth)]);
    if (fsx2 - sx2 > 1e-3) tab.push([dx, sx2, f32(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth)]);
  }
  return tab;
}

/**
 * cv2.resize(INTER_LINEAR) of a region to dw × dh (the detector's input for photos smaller than
 * 192 px). Mirrors OpenCV's 8-bit resizeGeneric_ (HResizeLinear / VResizeLinear): source
 * x = (x + 0.5)·scale − 0.5 in float32, weights × 2048 rounded half to even; columns past the edge
 * take the edge pixel, rows past it the edge row (their weights unchanged); rows then columns in
 * fixed point with the SIMD kernel's rounding. Returns RGB bytes.
 */
export function resizeLinear(image, rx, ry, rw, rh, dw, dh) {
  const {data, width, channels: cn} = image;
  const taps = (ssize, dsize, clampWeights) => {
    const scale = 1 / (dsize / ssize);
    return Array.from({length: dsize}, (_, d) => {
      const f = f32((d + 0.5) * scale - 0.5);
      let i = Math.floor(f), frac = f32(f - i);
      if (clampWeights && i < 0) [i, frac] = [0, 0];
      if (clampWeights && i >= ssize - 1) [i, frac] = [ssize - 1, 0];
      const clip = (k) => Math.min(Math.max(k, 0), ssize - 1);
      return [clip(i), clip(i + 1), roundHalfEven(f32(1 - frac) * 2048), roundHalfEven(frac * 2048)];
    });
  };
  const xt = taps(rw, dw, true), yt = taps(rh, dh, false);
  const rows = Array.from({length: rh}, () => null);
  const hline = (sy) => {  // one source row resized horizontally, values × 2048
    if (rows[sy]) return rows[sy];
    const line = new Int32Array(dw * 3), base = (ry + sy) * width + rx;
    xt.forEach(([i0, i1, a0, a1], x) => {
      for (let c = 0; c < 3; c++) line[x * 3 + c] = data[(base + i0) * cn + c] * a0 + data[(base + i1) * cn + c] * a1;
    });
    return (rows[sy] = line);
  };
  const out = new Uint8Array(dw * dh * 3);
  yt.forEach(([j0, j1, b0, b1], y) => {
    const h0 = hline(j0), h1 = hline(j1);
    for (let k = 0; k < dw * 3; k++) {
      out[y * dw * 3 + k] = clampByte((((b0 * (h0[k] >> 4)) >> 16) + ((b1 * (h1[k] >> 4)) >> 16) + 2) >> 2);
    }
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// Crops (data_pipelines/geometry.py)
// ------------------------------------------------------------------------------------------------
/**
 * crop_matrix(box, size, margin): the 3×3 similarity [a, 0, tx; 0, a, ty; 0, 0, 1] (row-major array
 * of 9) from photo pixels to the crop: the box made square (side = its longer edge) around its
 * centre, × margin, its centre onto crop pixel (size − 1) / 2 and its edges onto the crop's outer
 * pixel edges (−0.5 and size − 0.5).
 */
export function cropMatrix(box, size, margin = 1.25) {
  const [x0, y0, x1, y1] = box;
  const side = Math.max(x1 - x0, y1 - y0) * margin;
  if (!Number.isFinite(side) || side <= 0) throw new Error(`degenerate face box ${box}: the crop needs a positive size`);
  const scale = size / side, centre = (size - 1) / 2;
  return [scale, 0, centre - scale * (x0 + x1) / 2, 0, scale, centre - scale * (y0 + y1) / 2, 0, 0, 1];
}

/** Inverse of an affine 3×3 (geometry.invert), in OpenCV's closed form (warpAffine inverts the same way). */
export function invertAffine(m) {
  let d = m[0] * m[4] - m[1] * m[3];
  d = d !== 0 ? 1 / d : 0;
  const a = m[4] * d, b = -m[1] * d, c = -m[3] * d, e = m[0] * d;
  return [a, b, -a * m[2] - b * m[5], c, e, -c * m[2] - e * m[5], 0, 0, 1];
}

/** Product of two affine 3×3 matrices, a · b. */
export function multiplyAffine(a, b) {
  return [a[0] * b[0] + a[1] * b[3], a[0] * b[1] + a[1] * b[4], a[0] * b[2] + a[1] * b[5] + a[2],
          a[3] * b[0] + a[4] * b[3], a[3] * b[1] + a[4] * b[4], a[3] * b[2] + a[4] * b[5] + a[5], 0, 0, 1];
}

/** transform_points(matrix, [x, y]). */
export function transformPoint(m, [x, y]) {
  return [m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5]];
}

/**
 * warp_to_crop(image, matrix, size): the size² RGB crop that `matrix` maps the photo to. As in
 * Python: where the crop shrinks the photo more than 2× (scale < 0.5), the photo is first shrunk with
 * cv2.resize(INTER_AREA) to 1.5 source pixels per crop pixel (sizes rounded half to even, as
 * Python's round) and that resize composed into the matrix; then cv2.warpAffine(INTER_LINEAR,
 * BORDER_CONSTANT 0): crop pixel (i, j) samples the photo at inverse(matrix)·(i, j), integer
 * coordinates being pixel centres, neighbours outside the photo black, the result rounded half to even.
 */
export function warpToCrop(image, matrix, size, {antialias = true} = {}) {
  let source = image, m = matrix;
  const scale = Math.sqrt(Math.abs(m[0] * m[4] - m[1] * m[3]));
  if (antialias && scale < 0.5) {
    const factor = scale * 1.5;
    const nw = Math.max(1, roundHalfEven(image.width * factor)), nh = Math.max(1, roundHalfEven(image.height * factor));
    source = {data: resizeArea(image, 0, 0, image.width, image.height, nw, nh), width: nw, height: nh, channels: 3};
    const sx = nw / image.width, sy = nh / image.height;
    // INTER_AREA maps source pixel centre x to s·(x + 0.5) − 0.5.
    m = multiplyAffine(m, invertAffine([sx, 0, 0.5 * sx - 0.5, 0, sy, 0.5 * sy - 0.5, 0, 0, 1]));
  }
  const inv = invertAffine(m);
  const {data, width, height, channels: cn} = source;
  const out = new Uint8Array(size * size * 3);
  const pixel = (x, y, c) => (x >= 0 && y >= 0 && x < width && y < height ? data[(y * width + x) * cn + c] : 0);
  for (let j = 0; j < size; j++) {
    for (let i = 0; i < size; i++) {
      const X = inv[0] * i + inv[1] * j + inv[2], Y = inv[3] * i + inv[4] * j + inv[5];
      const x0 = Math.floor(X), y0 = Math.floor(Y);
      const o = (j * size + i) * 3;
      if (x0 < -1 || y0 < -1 || x0 >= width || y0 >= height) continue;  // all four neighbours outside: black
      const ax = X - x0, ay = Y - y0;
      for (let c = 0; c < 3; c++) {
        const top = pixel(x0, y0, c) + ax * (pixel(x0 + 1, y0, c) - pixel(x0, y0, c));
        const bottom = pixel(x0, y0 + 1, c) + ax * (pixel(x0 + 1, y0 + 1, c) - pixel(x0, y0 + 1, c));
        out[o + c] = clampByte(roundHalfEven(top + ay * (bottom - top)));
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// BlazeFace (cfdrnn_keras detector: BlazeFace, FaceDetector, weighted_nms, BoxCalibration)
// ------------------------------------------------------------------------------------------------
/** FaceDetector._windows: [x0, y0, side, isTile]: the whole photo as one centred square, then half-size tiles. */
export function detectorWindows(width, height, {zoom = 2, min_tile = 480} = {}) {
  const longest = Math.max(width, height);
  const windows = [[Math.floor((width - longest) / 2), Math.floor((height - longest) / 2), longest, false]];
  const side = Math.ceil(longest / 2);
  if (zoom < 2 || side < min_tile) return windows;
  for (const y0 of tileStarts(height, side)) for (const x0 of tileStarts(width, side)) windows.push([x0, y0, side, true]);
  return windows;
}

/** _tile_starts: window starts covering [0, length) with half-window overlap (np.linspace, rounded half to even). */
export function tileStarts(length, side) {
  if (length <= side) return [Math.floor((length - side) / 2)];
  const count = Math.ceil((length - side) / (side / 2)) + 1;
  const step = (length - side) / (count - 1);
  return Array.from({length: count}, (_, i) => roundHalfEven(i === count - 1 ? length - side : i * step));
}

/**
 * BlazeFace.__call__'s input: the part of the square window (x0, y0, side) inside the photo resized
 * to the model's scale (INTER_AREA when shrinking, INTER_LINEAR otherwise) and pasted into a black
 * 192² input, scaled to [−1, 1] in float32. Returns {input, px, py, fx, fy, sx0, sy0}: what
 * decodeBlazeFace needs to map the boxes back.
 */
export function blazeFaceInput(image, x0, y0, side, size = 192) {
  const {width, height} = image;
  const sx0 = Math.max(0, x0), sy0 = Math.max(0, y0), sx1 = Math.min(width, x0 + side), sy1 = Math.min(height, y0 + side);
  const k = size / side;
  const px = roundHalfEven((sx0 - x0) * k), py = roundHalfEven((sy0 - y0) * k);
  const w2 = Math.min(size - px, Math.max(1, roundHalfEven((sx1 - sx0) * k)));
  const h2 = Math.min(size - py, Math.max(1, roundHalfEven((sy1 - sy0) * k)));
  const resize = k < 1 ? resizeArea : resizeLinear;
  const region = resize(image, sx0, sy0, sx1 - sx0, sy1 - sy0, w2, h2);
  const input = new Float32Array(size * size * 3).fill(-1);  // black: 0 · (1 / 127.5) − 1
  const unit = f32(1 / 127.5);
  for (let y = 0; y < h2; y++) {
    for (let x = 0; x < w2; x++) {
      for (let c = 0; c < 3; c++) {
        input[((py + y) * size + px + x) * 3 + c] = f32(f32(region[(y * w2 + x) * 3 + c] * unit) - 1);
      }
    }
  }
  return {input, px, py, fx: (sx1 - sx0) / w2, fy: (sy1 - sy0) / h2, sx0, sy0};
}

/**
 * The raw outputs (regressors [2304 × 16], logits [2304]) to boxes in PHOTO pixels and scores, before
 * suppression. One anchor per cell of a 48 × 48 grid, centre ((x + 0.5) / 48, (y + 0.5) / 48), size 1;
 * box centre = (regressor / 192 + anchor) · 192, size = regressor[2:4]; model-input pixel edges e map
 * to photo edges (e − paste offset) · (region / resized) + region start, and pixel centres are edges − 0.5.
 */
export function decodeBlazeFace(regressors, logits, window, scoreThreshold, size = 192, grid = 48) {
  const boxes = [], scores = [];
  const {px, py, fx, fy, sx0, sy0} = window;
  for (let a = 0; a < grid * grid; a++) {
    const logit = Math.min(100, Math.max(-100, logits[a]));
    const score = 1 / (1 + Math.exp(-logit));
    if (!(score >= scoreThreshold)) continue;
    const r = a * 16;
    const cx = (regressors[r] / size + ((a % grid) + 0.5) / grid) * size;
    const cy = (regressors[r + 1] / size + (Math.floor(a / grid) + 0.5) / grid) * size;
    const hw = regressors[r + 2] / 2, hh = regressors[r + 3] / 2;
    boxes.push([(cx - hw - px) * fx + sx0 - 0.5, (cy - hh - py) * fy + sy0 - 0.5,
                (cx + hw - px) * fx + sx0 - 0.5, (cy + hh - py) * fy + sy0 - 0.5]);
    scores.push(score);
  }
  return {boxes, scores};
}

/** _inside_tile: tile detections (box relative to the tile) that are small and not cut by an inner tile edge. */
export function insideTile(box, x0, y0, side, width, height) {
  const margin = 0.02 * side;
  return (x0 > 0 ? box[0] > margin : true) && (y0 > 0 ? box[1] > margin : true)
    && (x0 + side < width ? box[2] < side - margin : true) && (y0 + side < height ? box[3] < side - margin : true)
    && (box[2] - box[0]) < 0.5 * side;
}

/** iou of two (x0, y0, x1, y1) boxes; 0 when they do not overlap. */
export function iou(a, b) {
  const ix = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const iy = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = ix * iy;
  const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return union > 0 ? inter / union : 0;
}

/** weighted_nms: MediaPipe's blending suppression; each kept box is the score-weighted mean of its cluster. */
export function weightedNms(boxes, scores, iouThreshold) {
  const order = scores.map((_, i) => i).sort((i, j) => scores[j] - scores[i]);
  const used = new Uint8Array(scores.length);
  const kept = [];
  for (const i of order) {
    if (used[i]) continue;
    const cluster = order.filter((j) => !used[j] && iou(boxes[i], boxes[j]) > iouThreshold);
    let total = 0;
    const box = [0, 0, 0, 0];
    for (const j of cluster) {
      used[j] = 1;
      total += scores[j];
      for (let k = 0; k < 4; k++) box[k] += boxes[j][k] * scores[j];
    }
    kept.push([...box.map((v) => v / total), scores[i]]);
  }
  return kept;
}

/** BoxCalibration.apply: the detector's box moved and scaled to the tight 68-point box. */
export function calibrateBox(box, {dx = 0, dy = 0, sx = 1, sy = 1} = {}) {
  const [x0, y0, x1, y1] = box, w = x1 - x0, h = y1 - y0;
  const cx = (x0 + x1) / 2 + dx * w, cy = (y0 + y1) / 2 + dy * h, hw = sx * w / 2, hh = sy * h / 2;
  return [cx - hw, cy - hh, cx + hw, cy + hh];
}

// ------------------------------------------------------------------------------------------------
// The runtime and the landmarker
// ------------------------------------------------------------------------------------------------
let liteRtPromise = null;  // LiteRT.js allows one runtime per page

async function liteRt(base) {
  if (!liteRtPromise) {
    liteRtPromise = (async () => {
      const module = await import(new URL("litert/core.js", base).href);
      await module.loadLiteRt(new URL("litert/", base).href);
      return module;
    })().catch((error) => {
      liteRtPromise = null;
      throw new Error(`cannot start LiteRT.js (litert/): ${error.message ?? error}`);
    });
  }
  return liteRtPromise;
}

async function compile(module, base, path, what) {
  try {
    return await module.loadAndCompile(new URL(path, base).href, {accelerator: "wasm"});
  } catch (error) {
    throw new Error(`cannot load the ${what} ${path}: ${String(error.message ?? error).split("\n")[0]}`);
  }
}

/** Run a compiled model on one input array; returns the outputs' typed arrays by output name. */
async function runModel(module, model, array, shape, signature) {
  const input = new module.Tensor(array, shape);
  try {
    if (signature) {
      const runner = model.signatures[signature];
      const name = runner.getInputDetails()[0].name;
      const outputs = await runner.run({[name]: input});
      const result = {};
      for (const [key, tensor] of Object.entries(outputs)) {
        result[key] = tensor.toTypedArray().slice();
        tensor.delete();
      }
      return result;
    }
    const outputs = await model.run(input);
    const details = model.getOutputDetails();
    const result = {};
    outputs.forEach((tensor, i) => {
      result[i] = {shape: Array.from(details[i].shape), data: tensor.toTypedArray().slice()};
      tensor.delete();
    });
    return result;
  } finally {
    input.delete();
  }
}

/**
 * Load the models described by `base/model.json` (written by `tools/export.py --formats web`) and
 * return a Landmarker. Options override model.json's detector settings (score_threshold,
 * iou_threshold, zoom, min_tile) and `warmup` (default true: one run of each model on a black input).
 */
export async function createLandmarker({base = HERE, config = "model.json", warmup = true, ...overrides} = {}) {
  base = new URL(base, typeof document !== "undefined" ? document.baseURI : HERE);
  let settings;
  try {
    const response = await fetch(new URL(config, base));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    settings = await response.json();
  } catch (error) {
    throw new Error(`cannot load ${config}: ${error.message}`);
  }
  const module = await liteRt(base);
  const landmarks = await compile(module, base, settings.landmark_model, "landmark model");
  const faces = await compile(module, base, settings.detector_model, "face detector");
  const landmarker = new Landmarker(module, settings, landmarks, faces, overrides);
  if (warmup) {
    const size = landmarker.cropSize;
    await landmarker.runCrop(new Uint8Array(size * size * 3));
    await landmarker.findFaces({data: new Uint8Array(4 * 4 * 3), width: 4, height: 4, channels: 3});
  }
  return landmarker;
}

export class Landmarker {
  constructor(module, settings, landmarkModel, detectorModel, overrides = {}) {
    this.module = module;
    this.model = settings.model;
    this.settings = settings;
    this.detectorOptions = {...settings.detector, ...overrides};
    this.landmarkModel = landmarkModel;
    this.detectorModel = detectorModel;
    const input = landmarkModel.getInputDetails()[0];
    this.cropSize = input.shape[1];
    this.cropShape = Array.from(input.shape, (v) => (v < 0 ? 1 : v));
    this.signature = "serving_default" in landmarkModel.signatures ? "serving_default" : null;
    this.margin = settings.crop_margin ?? 1.25;
  }

  /** FaceDetector.detect: every face as [x0, y0, x1, y1, score], best first, 68-point-box convention. */
  async findFaces(image) {
    const o = this.detectorOptions, size = o.input_size ?? 192;
    const all = [], allScores = [];
    for (const [x0, y0, side, isTile] of detectorWindows(image.width, image.height, o)) {
      const window = blazeFaceInput(image, x0, y0, side, size);
      const outputs = Object.values(await runModel(this.module, this.detectorModel, window.input, [1, size, size, 3]));
      const regressors = outputs.find((out) => out.shape.at(-1) === 16).data;
      const logits = outputs.find((out) => out.shape.at(-1) === 1).data;
      const {boxes, scores} = decodeBlazeFace(regressors, logits, window, o.score_threshold, size, o.grid ?? 48);
      boxes.forEach((box, i) => {
        const relative = [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0];
        if (!isTile || insideTile(relative, x0, y0, side, image.width, image.height)) {
          all.push(box);
          allScores.push(scores[i]);
        }
      });
    }
    const faces = weightedNms(all, allScores, o.iou_threshold)
      .map(([x0, y0, x1, y1, score]) => [...calibrateBox([x0, y0, x1, y1], o.calibration), score]);
    return faces.sort((a, b) => b[4] - a[4]);
  }

  /** The network on one uint8 RGB crop: {points: 68 [x, y] in crop pixels, confidence: 68 values}. */
  async runCrop(crop) {
    const out = await runModel(this.module, this.landmarkModel, crop, this.cropShape, this.signature);
    let landmarks = out.landmarks, confidence = out.confidence;
    if (!landmarks) {  // a file without the signature: outputs by shape
      const list = Object.values(out);
      landmarks = list.find((o) => o.data.length === NUM_LANDMARKS * 2).data;
      confidence = list.find((o) => o.data.length === NUM_LANDMARKS)?.data;
    }
    const points = Array.from({length: NUM_LANDMARKS}, (_, k) => [landmarks[2 * k], landmarks[2 * k + 1]]);
    return {points, confidence: confidence ? Array.from(confidence) : new Array(NUM_LANDMARKS).fill(1)};
  }

  /**
   * LandmarkDetector.detect: landmarks of every face found in `source`, or of `boxes` given in the
   * 68-point-box convention. Returns {width, height, faces: [{box, score, points, confidence}],
   * ms_detector (face finding), ms_per_face (crop + network + mapping back, per face), ms_total, model}.
   */
  async detect(source, {boxes = null} = {}) {
    const image = imagePixels(source);
    const started = performance.now();
    const found = boxes ? boxes.map((b) => Array.from(b)) : await this.findFaces(image);
    const detected = performance.now();
    const faces = [];
    for (const box of found) {
      const [x0, y0, x1, y1] = box;
      if (box.length < 4 || ![x0, y0, x1, y1].every(Number.isFinite) || x1 <= x0 || y1 <= y0) {
        throw new Error(`invalid face box ${box}: need x0 < x1 and y0 < y1`);
      }
      const matrix = cropMatrix(box, this.cropSize, this.margin);
      const crop = warpToCrop(image, matrix, this.cropSize);
      const {points, confidence} = await this.runCrop(crop);
      const back = invertAffine(matrix);
      faces.push({box: [x0, y0, x1, y1], score: box.length > 4 ? box[4] : null,
                  points: points.map((p) => transformPoint(back, p)), confidence});
    }
    const done = performance.now();
    return {width: image.width, height: image.height, faces, model: this.model,
            ms_detector: detected - started, ms_per_face: faces.length ? (done - detected) / faces.length : null,
            ms_total: done - started};
  }
}

let defaultLandmarker = null;

/** `Landmarker.detect` with the landmarker of this folder, created on the first call. */
export async function detect(source, options = {}) {
  if (!defaultLandmarker) defaultLandmarker = createLandmarker().catch((error) => { defaultLandmarker = null; throw error; });
  return (await defaultLandmarker).detect(source, options);
}

/** The folder's Landmarker (created on the first call), e.g. to read `.model` before detecting. */
export function landmarker() {
  if (!defaultLandmarker) defaultLandmarker = createLandmarker().catch((error) => { defaultLandmarker = null; throw error; });
  return defaultLandmarker;
}

/**
 * A result as one entry of tools/predict.py's JSON `inputs` (values rounded as FaceLandmarks.to_dict
 * does), plus ms_per_face and model.
 */
export function toRecord(result, file) {
  const r2 = (v) => Math.round(v * 100) / 100, r4 = (v) => Math.round(v * 1e4) / 1e4;
  return {
    file, kind: "image", width: result.width, height: result.height,
    status: result.faces.length ? "ok" : "no face",
    ...(result.faces.length ? {} : {error: `${file}: no face found`}),
    faces: result.faces.map((f) => ({box: f.box.map(r2), ...(f.score == null ? {} : {score: r4(f.score)}),
                                     points: f.points.map(([x, y]) => [r2(x), r2(y)]), confidence: f.confidence.map(r4)})),
    ms_per_face: result.ms_per_face == null ? null : Math.round(result.ms_per_face * 100) / 100,
    ms_detector: Math.round(result.ms_detector * 100) / 100,
    model: result.model,
  };
}

/** Draw the photo and, over it, each face's box and 68 points (pixel centre x at canvas x + 0.5). */
export function drawFaces(canvas, source, faces) {
  const image = source.data ? null : source;
  const width = source.videoWidth || source.naturalWidth || source.width;
  const height = source.videoHeight || source.naturalHeight || source.height;
  if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, {width, height});
  const context = canvas.getContext("2d");
  if (image) context.drawImage(image, 0, 0, width, height);
  else context.putImageData(new ImageData(new Uint8ClampedArray(source.data), width, height), 0, 0);
  const unit = Math.max(1, Math.max(width, height) / 500);
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box;
    context.lineWidth = 1.5 * unit;
    context.strokeStyle = "#00e0ff";
    context.strokeRect(x0 + 0.5, y0 + 0.5, x1 - x0, y1 - y0);
    const radius = Math.max(1.6 * unit, (x1 - x0) / 45);
    context.fillStyle = "#ffe600";
    context.strokeStyle = "rgba(0, 0, 0, 0.55)";
    context.lineWidth = 0.5 * unit;
    for (const [x, y] of face.points) {
      context.beginPath();
      context.arc(x + 0.5, y + 0.5, radius, 0, 2 * Math.PI);
      context.fill();
      context.stroke();
    }
  }
}
