// The services' HTTP API as the page uses it: the API key, JSON and NDJSON requests, errors
// turned into readable messages, and the wire codec's tensors (raw little-endian bytes or PNG
// frames, base64 in JSON; see wmpo_client.codec).

const KEY_STORAGE = "wmpo-api-key";
// The page is served at <service>/viewer/: the API is one level up.
export const API_ROOT = new URL("../", window.location.href);

export function getKey() {
  return window.sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  if (key) window.sessionStorage.setItem(KEY_STORAGE, key);
  else window.sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const h = { ...extra };
  const key = getKey();
  if (key) h["x-api-key"] = key;
  return h;
}

async function failure(response) {
  let code = "HTTP_" + response.status;
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // not the services' JSON error body
  }
  return new ApiError(response.status, code, message);
}

// A human sentence for an error, naming what to do where there is something to do.
export function describeError(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) {
      return `The service refused the API key (${err.message}). Enter the service's API key above.`;
    }
    return `${err.code} (${err.status}): ${err.message}`;
  }
  if (err && err.name === "AbortError") return "request cancelled";
  return `The service could not be reached (${err && err.message ? err.message : err}).`;
}

export async function request(path, { method = "GET", body, signal, base = API_ROOT } = {}) {
  const init = { method, signal, headers: headers(body ? { "content-type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(new URL(path, base), init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Each JSON line of an NDJSON response, as it arrives (fetch: EventSource cannot send a key).
export async function* ndjson(path, { signal } = {}) {
  const response = await fetch(new URL(path, API_ROOT), { headers: headers({}), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

// ------------------------------------------------------------------ tensors

function base64(bytes) {
  let text = "";
  const step = 0x8000; // String.fromCharCode takes a bounded number of arguments
  for (let i = 0; i < bytes.length; i += step) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  }
  return window.btoa(text);
}

// A uint8 (H, W, 3) tensor from an RGBA ImageData.
export function frameTensor(imageData) {
  const { width, height, data } = imageData;
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0, q = 0; p < data.length; p += 4, q += 3) {
    rgb[q] = data[p];
    rgb[q + 1] = data[p + 1];
    rgb[q + 2] = data[p + 2];
  }
  return { dtype: "uint8", shape: [height, width, 3], data: base64(rgb) };
}

// A float32 tensor of `shape` from a flat array of numbers, little-endian as the codec wants.
export function float32Tensor(values, shape) {
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  values.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return { dtype: "float32", shape, data: base64(bytes) };
}

// Image URLs, one per frame, of a PNG-encoded uint8 (T, H, W, 3) tensor.
export function frameUrls(tensor) {
  if (!tensor || !Array.isArray(tensor.png)) throw new Error("expected PNG frames");
  return tensor.png.map((b64) => "data:image/png;base64," + b64);
}
