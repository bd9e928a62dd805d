// A set of 48-bit row hashes with the first row number of each, in typed arrays: a JavaScript
// Map spends about 50 bytes per entry (and boxes every non-small number), which for a
// ten-million-row file would be half a gigabyte of heap just to find duplicates.

const EMPTY = -1;

export class HashIndex {
  private keys: Float64Array;
  private rows: Uint32Array;
  private used = 0;

  constructor(initialCapacity = 1024) {
    let cap = 16;
    while (cap < initialCapacity * 2) cap *= 2;
    this.keys = new Float64Array(cap).fill(EMPTY);
    this.rows = new Uint32Array(cap);
  }

  get size(): number {
    return this.used;
  }

  /** The row stored for `hash`, or undefined. `hash` is a non-negative integer below 2^53. */
  get(hash: number): number | undefined {
    const keys = this.keys;
    const mask = keys.length - 1;
    let i = this.slot(hash, mask);
    for (;;) {
      const k = keys[i];
      if (k === EMPTY) return undefined;
      if (k === hash) return this.rows[i];
      i = (i + 1) & mask;
    }
  }

  has(hash: number): boolean {
    return this.get(hash) !== undefined;
  }

  /** Stores `row` for `hash` unless the hash is already there; returns the stored row. */
  add(hash: number, row: number): number {
    if ((this.used + 1) * 4 > this.keys.length * 3) this.grow();
    const keys = this.keys;
    const mask = keys.length - 1;
    let i = this.slot(hash, mask);
    for (;;) {
      const k = keys[i];
      if (k === EMPTY) {
        keys[i] = hash;
        this.rows[i] = row;
        this.used++;
        return row;
      }
      if (k === hash) return this.rows[i];
      i = (i + 1) & mask;
    }
  }

  private slot(hash: number, mask: number): number {
    // The low 32 bits of a SHA-1 prefix are already uniform.
    return (hash % 4294967296) & mask;
  }

  private grow(): void {
    const oldKeys = this.keys;
    const oldRows = this.rows;
    this.keys = new Float64Array(oldKeys.length * 2).fill(EMPTY);
    this.rows = new Uint32Array(oldKeys.length * 2);
    this.used = 0;
    for (let i = 0; i < oldKeys.length; i++) if (oldKeys[i] !== EMPTY) this.add(oldKeys[i], oldRows[i]);
  }
}

/** A growable list of hashes in a Float64Array (for the eval split's first pass). */
export class HashList {
  private data = new Float64Array(1024);
  length = 0;

  push(v: number): void {
    if (this.length === this.data.length) {
      const next = new Float64Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = v;
  }

  /** The distinct values, ascending. */
  sortedUnique(): Float64Array {
    const a = this.data.subarray(0, this.length).sort();
    let n = 0;
    for (let i = 0; i < a.length; i++) if (i === 0 || a[i] !== a[i - 1]) a[n++] = a[i];
    return a.subarray(0, n);
  }
}

/**
 * A 53-bit hash of a string (two multiplicative 32-bit lanes, cross-mixed at the end). Not
 * cryptographic: it only has to spread rows evenly and make accidental collisions unlikely
 * (about 0.5% for one pair among ten million rows), at a small fraction of SHA-1's cost.
 */
export function hash53(text: string, seed: number): number {
  const s = (seed ^ Math.floor(seed / 4294967296)) | 0;
  let a = 0x9e3779b9 ^ s;
  let b = 0x85ebca6b ^ Math.imul(s, 0x27d4eb2f);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x9e3779b1);
    b = Math.imul(b ^ c, 0x5f356495);
  }
  a = Math.imul(a ^ (a >>> 16), 0x85ebca6b) ^ Math.imul(b ^ (b >>> 13), 0xc2b2ae35);
  b = Math.imul(b ^ (b >>> 16), 0x85ebca6b) ^ Math.imul(a ^ (a >>> 13), 0xc2b2ae35);
  return (b & 0x1fffff) * 4294967296 + (a >>> 0);
}
