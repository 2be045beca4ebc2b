// SHA-256 (FIPS 180-4) over a Blob read in slices, for files too large for one Web Crypto call
// (crypto.subtle.digest takes the whole file in memory and has no incremental form). The console
// hashes files up to 512 MiB with Web Crypto and larger ones here; the tests check both against
// Python's hashlib.

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const SLICE = 8 * 1024 * 1024; // bytes read from the Blob at a time (a multiple of the 64-byte block)

class Sha256 {
  constructor() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.w = new Uint32Array(64);
    this.tail = new Uint8Array(0); // bytes short of a whole block
    this.length = 0; // bytes hashed so far
  }

  blocks(bytes, end) { // compress bytes[0, end), end a multiple of 64
    const { h, w } = this;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let offset = 0; offset < end; offset += 64) {
      for (let t = 0; t < 16; t++) w[t] = view.getUint32(offset + t * 4);
      for (let t = 16; t < 64; t++) {
        const a = w[t - 15], b = w[t - 2];
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      let [a, b, c, d, e, f, g, k] = h;
      for (let t = 0; t < 64; t++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (k + S1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
    }
  }

  update(chunk) {
    this.length += chunk.length;
    let bytes = chunk;
    if (this.tail.length) {
      bytes = new Uint8Array(this.tail.length + chunk.length);
      bytes.set(this.tail);
      bytes.set(chunk, this.tail.length);
    }
    const whole = bytes.length - (bytes.length % 64);
    this.blocks(bytes, whole);
    this.tail = bytes.slice(whole);
  }

  hex() {
    const bits = this.length * 8;
    const padded = new Uint8Array(this.tail.length + 9 <= 64 ? 64 : 128);
    padded.set(this.tail);
    padded[this.tail.length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(padded.length - 4, bits >>> 0);
    this.blocks(padded, padded.length);
    return [...this.h].map((word) => word.toString(16).padStart(8, "0")).join("");
  }
}

// The lower-case hex SHA-256 of a Blob (a File), reporting the fraction read so far.
export async function sha256Stream(blob, onProgress = () => {}) {
  const hash = new Sha256();
  for (let offset = 0; offset < blob.size; offset += SLICE) {
    hash.update(new Uint8Array(await blob.slice(offset, offset + SLICE).arrayBuffer()));
    onProgress(Math.min(1, (offset + SLICE) / blob.size));
  }
  return hash.hex();
}

window.quantledgerSha256 = sha256Stream; // for the tests, which check it against hashlib
