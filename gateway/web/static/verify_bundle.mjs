#!/usr/bin/env node
// Verify a teacher-data gateway audit bundle with Node.js alone (18 or later; only its
// built-in crypto, fs and path): a second verifier, written apart from the gateway's
// Python, that shows the bundle format (docs/audit-bundle.md) is reproducible.
//
//   node verify_bundle.mjs BUNDLE_FOLDER [--previous EARLIER_BUNDLE]
//                          [--anchor ANCHOR_FILE | --anchor N:HASH ...] [--json]
//
// It prints the report `gateway audit verify --bundle` prints, with the same exit
// status (0 sound, 8 a problem found, 3 not a bundle, 7 a malformed anchor). Event
// bodies are parsed by the small JSON reader below, which keeps each number's spelling
// and every repeated name, so a body can be re-encoded exactly: in RFC 8785 (events
// naming "encoding": "rfc8785") or in Python's sorted json.dumps (events written before
// the switch, naming none).

import { createHash, createPublicKey, verify as verifySignature } from "node:crypto";
import { existsSync, readFileSync, realpathSync, statSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const GENESIS_HASH = "0".repeat(64);
const ENCODING = "rfc8785";
const BUNDLE_FILES = ["events.jsonl", "checkpoints.json", "public_key.pem", "manifest.json"];

class BundleError extends Error {
  constructor(message, code = "configuration_error", exitCode = 3) {
    super(message);
    this.code = code;
    this.exitCode = exitCode;
  }
}

// --- a JSON reader that keeps number spellings and repeated names ----------------------

// Values: null, true, false, strings as JS strings, {num: "spelling"}, arrays, and
// {members: [[name, value], ...]} for objects. Python's reader also takes NaN, Infinity
// and -Infinity, so this one does.
function parseJson(text) {
  let at = 0;
  const fail = () => {
    throw new SyntaxError(`not JSON at ${at}`);
  };
  const space = () => {
    while (at < text.length && " \t\n\r".includes(text[at])) at++;
  };
  const literal = (word, value) => {
    if (text.startsWith(word, at)) {
      at += word.length;
      return value;
    }
    return fail();
  };
  const string = () => {
    at++; // the opening quote
    let out = "";
    for (;;) {
      if (at >= text.length) fail();
      const ch = text[at];
      if (ch === '"') {
        at++;
        return out;
      }
      if (ch < " ") fail();
      if (ch !== "\\") {
        out += ch;
        at++;
        continue;
      }
      const esc = text[at + 1];
      const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
      if (esc in simple) {
        out += simple[esc];
        at += 2;
      } else if (esc === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(at + 2, at + 6))) {
        out += String.fromCharCode(parseInt(text.slice(at + 2, at + 6), 16));
        at += 6;
      } else fail();
    }
  };
  const value = () => {
    space();
    const ch = text[at];
    if (ch === "{") {
      at++;
      const members = [];
      space();
      if (text[at] === "}") {
        at++;
        return { members };
      }
      for (;;) {
        space();
        if (text[at] !== '"') fail();
        const name = string();
        space();
        if (text[at] !== ":") fail();
        at++;
        members.push([name, value()]);
        space();
        if (text[at] === ",") at++;
        else if (text[at] === "}") {
          at++;
          return { members };
        } else fail();
      }
    }
    if (ch === "[") {
      at++;
      const items = [];
      space();
      if (text[at] === "]") {
        at++;
        return items;
      }
      for (;;) {
        items.push(value());
        space();
        if (text[at] === ",") at++;
        else if (text[at] === "]") {
          at++;
          return items;
        } else fail();
      }
    }
    if (ch === '"') return string();
    if (ch === "t") return literal("true", true);
    if (ch === "f") return literal("false", false);
    if (ch === "n") return literal("null", null);
    if (ch === "N") return literal("NaN", { num: "NaN" });
    if (ch === "I") return literal("Infinity", { num: "Infinity" });
    if (text.startsWith("-Infinity", at)) return literal("-Infinity", { num: "-Infinity" });
    const match = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(at));
    if (!match) fail();
    at += match[0].length;
    return { num: match[0] };
  };
  const result = value();
  space();
  if (at !== text.length) fail();
  return result;
}

const isNumber = (v) => v !== null && typeof v === "object" && "num" in v;
const isObject = (v) => v !== null && typeof v === "object" && "members" in v;
const isInteger = (num) => /^-?[0-9]+$/.test(num);

// A parsed value as plain JS (repeated names: the last wins, as in Python and JSON.parse).
function plain(v) {
  if (isNumber(v)) return isInteger(v.num) ? Number(v.num) : numberOf(v.num);
  if (Array.isArray(v)) return v.map(plain);
  if (isObject(v)) {
    const out = new Map();
    for (const [name, item] of v.members) out.set(name, plain(item));
    return out;
  }
  return v;
}

function numberOf(spelling) {
  if (spelling === "NaN") return NaN;
  if (spelling === "Infinity") return Infinity;
  if (spelling === "-Infinity") return -Infinity;
  return Number(spelling);
}

// --- the two encodings -------------------------------------------------------------------

function encodeString(s, refuseLoneSurrogates) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    const code = s.charCodeAt(i);
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        out += ch + s[i + 1];
        i++;
        continue;
      }
    }
    if (code >= 0xd800 && code <= 0xdfff && refuseLoneSurrogates) {
      throw new RangeError("a lone surrogate has no UTF-8 form");
    }
    const short = { '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t" };
    if (ch in short) out += short[ch];
    else if (code < 0x20) out += "\\u" + code.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

// Repeated names collapse to the last value, at the place sorting gives them.
function lastOfEach(members) {
  const byName = new Map();
  for (const [name, value] of members) byName.set(name, value);
  return [...byName.entries()];
}

// RFC 8785: numbers are doubles written by ECMAScript's Number::toString, which is
// String(); names sort by UTF-16 code units, which is how JS compares strings.
function jcs(v) {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (typeof v === "string") return encodeString(v, true);
  if (isNumber(v)) {
    const n = numberOf(v.num);
    if (!Number.isFinite(n)) throw new RangeError("no RFC 8785 text for NaN or infinity");
    return String(n);
  }
  if (Array.isArray(v)) return "[" + v.map(jcs).join(",") + "]";
  const members = lastOfEach(v.members).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return "{" + members.map(([k, item]) => encodeString(k, true) + ":" + jcs(item)).join(",") + "}";
}

// Python's repr of a float: its shortest round-trip digits (as JS finds them), fixed
// notation when the decimal point falls within 16 digits, else 1.5e+16 style.
function pyFloatRepr(x) {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mantissa, exp] = Math.abs(x).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const point = Number(exp) + 1; // digits d1 d2 ... with the point after `point` of them
  let body;
  if (point > -4 && point <= 16) {
    if (point <= 0) body = "0." + "0".repeat(-point) + digits;
    else if (point < digits.length) body = digits.slice(0, point) + "." + digits.slice(point);
    else body = digits + "0".repeat(point - digits.length) + ".0";
  } else {
    const e = point - 1;
    const head = digits.length === 1 ? digits : digits[0] + "." + digits.slice(1);
    body = head + "e" + (e < 0 ? "-" : "+") + String(Math.abs(e)).padStart(2, "0");
  }
  return sign + body;
}

function compareCodePoints(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

// json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) of what
// Python's json.loads read: integers exact, other numbers as Python floats.
function legacy(v) {
  if (v === null) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (typeof v === "string") return encodeString(v, false);
  if (isNumber(v)) return isInteger(v.num) ? BigInt(v.num).toString() : pyFloatRepr(numberOf(v.num));
  if (Array.isArray(v)) return "[" + v.map(legacy).join(",") + "]";
  const members = lastOfEach(v.members).sort(([a], [b]) => compareCodePoints(a, b));
  return "{" + members.map(([k, item]) => encodeString(k, false) + ":" + legacy(item)).join(",") + "}";
}

// The RFC 8785 text of a JSON document (docs/audit-bundle.md's test vectors use it).
export function canonicalize(text) {
  return jcs(parseJson(text));
}

// What the spelling check says of an event body's text (null: spelled as it records).
export function spellingProblem(text) {
  return encodingProblem(text, parseJson(text));
}

function encodingProblem(text, tree) {
  const body = plain(tree);
  if (!body.has("encoding")) {
    return legacy(tree) === text ? null : "its body is not written in the encoding it records (legacy)";
  }
  if (body.get("encoding") !== ENCODING) return `its body names an encoding other than ${ENCODING}`;
  try {
    if (jcs(tree) === text) return null;
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
  }
  return `its body is not written in the encoding it records (${ENCODING})`;
}

// --- Python's conversions, where the report quotes or compares a value -----------------

// Python's str() of a JSON value, as an f-string prints it.
function pyStr(v) {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isInteger(v) && !Object.is(v, -0) ? String(v) : pyFloatRepr(v);
  if (typeof v === "string") return v;
  return pyRepr(v);
}

function pyRepr(v) {
  if (typeof v === "string") return "'" + v.replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "'";
  if (Array.isArray(v)) return "[" + v.map(pyRepr).join(", ") + "]";
  if (v instanceof Map) return "{" + [...v].map(([k, x]) => `${pyRepr(k)}: ${pyRepr(x)}`).join(", ") + "}";
  if (v !== null && typeof v === "object") {
    return "{" + Object.entries(v).map(([k, x]) => `${pyRepr(k)}: ${pyRepr(x)}`).join(", ") + "}";
  }
  return pyStr(v);
}

// Python's == between JSON values (True == 1, 3.0 == 3).
function pyEquals(a, b) {
  const num = (v) => (typeof v === "boolean" ? Number(v) : v);
  return num(a) === num(b);
}

// Python's int() of a JSON value, or undefined where it raises.
function pyInt(v) {
  if (typeof v === "boolean") return Number(v);
  if (typeof v === "number") return Number.isFinite(v) ? Math.trunc(v) : undefined;
  if (typeof v === "string" && /^\s*[+-]?[0-9]+(_[0-9]+)*\s*$/.test(v)) {
    return Number(v.trim().replace(/_/g, ""));
  }
  return undefined;
}

// Python's bytes.fromhex, or undefined where it raises.
function fromHex(text) {
  if (!/^(\s*[0-9a-fA-F]{2})*\s*$/.test(text)) return undefined;
  return Buffer.from(text.replace(/\s/g, ""), "hex");
}

// How Python prints the path it was given (pathlib drops "." parts and trailing "/").
function pyPath(text) {
  const absolute = text.startsWith("/");
  const parts = text.split("/").filter((p) => p !== "" && p !== ".");
  const joined = parts.join("/");
  return absolute ? "/" + joined : joined || ".";
}

// Python's text-mode lines: "\n", "\r\n" and "\r" all end one.
function pyLines(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

// --- the checks --------------------------------------------------------------------------

const sha256 = (text) => createHash("sha256").update(Buffer.from(text, "utf8")).digest("hex");

const describe = (problem) => `${problem.seq === null ? "chain head" : `event ${problem.seq}`}: ${problem.reason}`;

function* checkEvent(seq, digest, text, expectedSeq, expectedPrev) {
  if (sha256(text) !== digest) {
    yield "content was changed: its hash no longer matches its body";
    return;
  }
  let tree, body;
  try {
    tree = parseJson(text);
    if (!isObject(tree)) throw new SyntaxError("not an object");
    body = plain(tree);
  } catch {
    yield "its body is not an event record";
    return;
  }
  const writtenSeq = body.has("seq") ? body.get("seq") : null;
  const prevHash = body.has("prev_hash") ? body.get("prev_hash") : null;
  if (!pyEquals(writtenSeq, seq)) {
    yield `stored at position ${seq} but written as event ${pyStr(writtenSeq)} (reordered)`;
  }
  if (seq !== expectedSeq) {
    if (seq > expectedSeq) yield `expected event ${expectedSeq} here: event(s) before it were deleted`;
    else yield "sequence number repeats or goes backwards (inserted or reordered)";
  }
  if (prevHash !== expectedPrev) {
    yield "does not follow the event before it (an event was deleted, inserted or reordered)";
  }
  const problem = encodingProblem(text, tree);
  if (problem !== null) yield problem;
}

function publicKeyOf(path) {
  const pem = readFileSync(path, "utf8");
  let key;
  try {
    if (!pem.includes("-----BEGIN PUBLIC KEY-----")) throw new Error("no public key");
    key = createPublicKey({ key: pem, format: "pem" });
  } catch {
    throw new BundleError(`${path} is not a public key`);
  }
  if (key.asymmetricKeyType !== "ed25519") throw new BundleError(`${path} is not an Ed25519 public key`);
  return key;
}

function fingerprintOf(key) {
  const raw = Buffer.from(key.export({ format: "jwk" }).x, "base64url");
  return createHash("sha256").update(raw).digest("hex");
}

function verifyCheckpoints(result, checkpoints, hashes, key) {
  const seqs = [...hashes.keys()];
  const lastSeq = seqs.length ? Math.max(...seqs) : 0;
  let signedUpTo = 0;
  const fingerprint = fingerprintOf(key);
  const malformed = () => {
    throw new TypeError("not in the bundle format");
  };
  let list = checkpoints;
  if (!Array.isArray(list)) {
    // Python iterates a dict's keys or a string's characters: only an empty one passes.
    const empty = (typeof list === "string" && list === "") || (list instanceof Map && list.size === 0);
    list = empty ? [] : malformed();
  }
  for (const checkpoint of list) {
    if (!(checkpoint instanceof Map) || !checkpoint.has("seq") || !checkpoint.has("hash")) malformed();
    const seq = pyInt(checkpoint.get("seq"));
    if (seq === undefined) malformed();
    const headHash = pyStr(checkpoint.get("hash"));
    const signedBy = checkpoint.has("public_key_fingerprint") ? checkpoint.get("public_key_fingerprint") : null;
    if (signedBy !== fingerprint) {
      result.problems.push({
        seq: null,
        reason: `checkpoint at event ${seq}: signed by another key (${pyStr(signedBy)}); it cannot be checked with this public key`,
      });
      continue;
    }
    if (!checkpoint.has("signed_at") || !checkpoint.has("signature")) malformed();
    const message = Buffer.from(
      jcs({ members: [["seq", { num: String(seq) }], ["hash", headHash], ["signed_at", pyStr(checkpoint.get("signed_at"))]] }),
      "utf8",
    );
    const signature = fromHex(pyStr(checkpoint.get("signature")));
    let valid = false;
    try {
      valid = signature !== undefined && verifySignature(null, message, key, signature);
    } catch {
      valid = false;
    }
    if (!valid) {
      result.problems.push({ seq: null, reason: `checkpoint at event ${seq}: the signature is not valid` });
      continue;
    }
    if (!hashes.has(seq)) {
      result.problems.push({
        seq: null,
        reason: `checkpoint at event ${seq}: that event is missing (the log ends at event ${lastSeq}: it was truncated)`,
      });
    } else if (hashes.get(seq) !== headHash) {
      result.problems.push({ seq, reason: "differs from the signed checkpoint (the chain was rewritten)" });
    }
    signedUpTo = Math.max(signedUpTo, seq);
  }
  if (lastSeq > signedUpTo) {
    result.problems.push({
      seq: null,
      reason: `events ${signedUpTo + 1} to ${lastSeq} are not covered by any signed checkpoint (added after the export was signed)`,
    });
  }
}

function parseAnchor(text) {
  const colon = text.indexOf(":");
  const seq = colon < 0 ? text : text.slice(0, colon);
  const headHash = colon < 0 ? "" : text.slice(colon + 1);
  if (!/^[0-9]+$/.test(seq) || !/^[0-9a-fA-F]{64}$/.test(headHash)) {
    throw new BundleError(
      "an anchor is EVENTS:HEAD_HASH, the count and 64-hex-digit head hash printed by an earlier verification (for example 42:9f86d081...)",
      "schema_error",
      7,
    );
  }
  return { seq: Number(seq), headHash: headHash.toLowerCase() };
}

function anchorOfBundle(path) {
  try {
    const manifest = plain(parseJson(readFileSync(join(path, "manifest.json"), "utf8")));
    const seq = pyInt(manifest.get("events"));
    if (seq === undefined || !manifest.has("head_hash")) throw new TypeError("no anchor");
    return { seq, headHash: pyStr(manifest.get("head_hash")) };
  } catch {
    throw new BundleError(`${path} holds no readable manifest.json`);
  }
}

const ANCHOR_FORMAT = "teacher-gateway audit anchor v1";

// An anchor file written by `gateway audit anchor`: a signed head kept outside the gateway.
function loadSignedAnchor(path) {
  const name = pyPath(path);
  const refuse = () => {
    throw new BundleError(
      `${name} is not an audit anchor: expected the JSON document \`gateway audit anchor\` writes ("format": "${ANCHOR_FORMAT}", seq, hash, signed_at, public_key_fingerprint, signature)`,
      "schema_error",
      7,
    );
  };
  let tree;
  try {
    tree = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(readFileSync(path)));
  } catch {
    refuse();
  }
  if (!isObject(tree)) refuse();
  const members = new Map(tree.members); // repeated names: the last wins, as in Python
  if (members.get("format") !== ANCHOR_FORMAT) refuse();
  const fields = ["seq", "hash", "signed_at", "public_key_fingerprint", "signature"];
  if (!fields.every((f) => members.has(f))) refuse();
  const seq = members.get("seq");
  if (!isNumber(seq) || !isInteger(seq.num) || BigInt(seq.num) < 1n || BigInt(seq.num) > 2n ** 53n - 1n) refuse();
  if (!fields.slice(1).every((f) => typeof members.get(f) === "string")) refuse();
  return {
    name,
    signed: true,
    seq: Number(seq.num),
    headHash: members.get("hash"),
    signedAt: members.get("signed_at"),
    fingerprint: members.get("public_key_fingerprint"),
    signature: members.get("signature"),
    timestamped: members.has("timestamp"),
  };
}

function parseAnyAnchor(text) {
  if (existsSync(text) && statSync(text).isFile()) return loadSignedAnchor(text);
  return parseAnchor(text);
}

function checkSignedAnchor(anchor, hashes, key) {
  const problem = (reason) => [{ seq: null, reason: `anchor ${anchor.name}: ${reason}` }];
  if (anchor.fingerprint !== fingerprintOf(key)) {
    return problem(
      `signed by another key (${anchor.fingerprint}), not the one this log is checked with: it is not an anchor of this log (forged, or another gateway's)`,
    );
  }
  const message = Buffer.from(
    jcs({ members: [["seq", { num: String(anchor.seq) }], ["hash", anchor.headHash], ["signed_at", anchor.signedAt]] }),
    "utf8",
  );
  const signature = fromHex(anchor.signature);
  let valid = false;
  try {
    valid = signature !== undefined && verifySignature(null, message, key, signature);
  } catch {
    valid = false;
  }
  if (!valid) return problem("the signature is not valid (the anchor was forged or altered)");
  if (!hashes.has(anchor.seq)) {
    return problem(
      `event ${anchor.seq}, the head it anchors, is missing: the log was cut back (truncated or rolled back) since it was anchored`,
    );
  }
  if (hashes.get(anchor.seq) !== anchor.headHash) {
    return [
      {
        seq: anchor.seq,
        reason: `differs from the head signed in anchor ${anchor.name}: the log was rewritten since it was anchored`,
      },
    ];
  }
  return [];
}

function checkAnchor(anchor, hashes, key) {
  if (anchor.signed) return checkSignedAnchor(anchor, hashes, key);
  if (anchor.seq === 0) return [];
  if (!hashes.has(anchor.seq)) {
    return [
      {
        seq: null,
        reason: `event ${anchor.seq}, the head noted earlier, is missing: the log was cut back (truncated or rolled back) since`,
      },
    ];
  }
  if (hashes.get(anchor.seq) !== anchor.headHash) {
    return [{ seq: anchor.seq, reason: "differs from the head hash noted earlier: the log was rewritten since" }];
  }
  return [];
}

export function verifyBundle(path, anchors = []) {
  const isFile = (p) => existsSync(p) && statSync(p).isFile();
  const missing = BUNDLE_FILES.filter((name) => !isFile(join(path, name)));
  if (missing.length) throw new BundleError(`${path} is not an audit bundle: missing ${missing.join(", ")}`);
  const result = { eventsChecked: 0, headHash: GENESIS_HASH, problems: [], fingerprint: null };
  let expectedPrev = GENESIS_HASH;
  let expectedSeq = 1;
  const hashes = new Map();
  pyLines(readFileSync(join(path, "events.jsonl"), "utf8")).forEach((line, index) => {
    let seq, digest, text;
    try {
      const record = plain(parseJson(line));
      if (!(record instanceof Map) || !["seq", "hash", "body"].every((k) => record.has(k))) throw new TypeError();
      seq = pyInt(record.get("seq"));
      if (seq === undefined) throw new TypeError();
      digest = pyStr(record.get("hash"));
      text = pyStr(record.get("body"));
    } catch {
      result.problems.push({ seq: null, reason: `line ${index + 1} is not an event record` });
      return;
    }
    for (const reason of checkEvent(seq, digest, text, expectedSeq, expectedPrev)) {
      result.problems.push({ seq, reason });
    }
    hashes.set(seq, digest);
    result.eventsChecked += 1;
    expectedPrev = digest;
    expectedSeq = seq + 1;
  });
  result.headHash = expectedPrev;
  const key = publicKeyOf(join(path, "public_key.pem"));
  let manifest;
  try {
    const checkpoints = plain(parseJson(readFileSync(join(path, "checkpoints.json"), "utf8")));
    manifest = plain(parseJson(readFileSync(join(path, "manifest.json"), "utf8")));
    verifyCheckpoints(result, checkpoints, hashes, key);
  } catch (error) {
    if (error instanceof BundleError) throw error;
    throw new BundleError(`${path}: checkpoints.json or manifest.json is not in the bundle format`);
  }
  result.fingerprint = fingerprintOf(key);
  const field = (name) => (manifest instanceof Map && manifest.has(name) ? manifest.get(name) : null);
  if (field("public_key_fingerprint") !== result.fingerprint) {
    result.problems.push({ seq: null, reason: "the public key is not the one the manifest names" });
  }
  if (!pyEquals(field("events"), result.eventsChecked) || field("head_hash") !== result.headHash) {
    result.problems.push({ seq: null, reason: "the events do not match the manifest's count and head" });
  }
  for (const anchor of anchors) result.problems.push(...checkAnchor(anchor, hashes, key));
  return result;
}

// Python's json.dumps(..., indent=2): ASCII only, non-ASCII as \uXXXX escapes.
function pythonJson(value) {
  return JSON.stringify(value, null, 2).replace(
    /[\u0080-\uffff]/g,
    (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"),
  );
}

export function main(argv) {
  const usage =
    "usage: node verify_bundle.mjs BUNDLE [--previous EARLIER_BUNDLE] [--anchor ANCHOR_FILE|EVENTS:HEAD_HASH ...] [--json]";
  let bundle = null;
  let previous = null;
  const anchorTexts = [];
  let asJson = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--json") asJson = true;
    else if (arg === "--previous" && i + 1 < argv.length) previous = argv[++i];
    else if (arg === "--anchor" && i + 1 < argv.length) anchorTexts.push(argv[++i]);
    else if (!arg.startsWith("--") && bundle === null) bundle = arg;
    else {
      console.error(usage);
      return 2;
    }
  }
  const isDir = (p) => existsSync(p) && statSync(p).isDirectory();
  if (bundle === null || !isDir(bundle) || (previous !== null && !isDir(previous))) {
    console.error(usage);
    return 2;
  }
  let result;
  let anchors;
  try {
    anchors = anchorTexts.map(parseAnyAnchor);
    if (previous !== null) anchors.push(anchorOfBundle(pyPath(previous)));
    result = verifyBundle(pyPath(bundle), anchors);
  } catch (error) {
    if (!(error instanceof BundleError)) throw error;
    if (asJson) console.log(pythonJson({ error: { code: error.code, message: error.message, details: [] } }));
    console.error(`verify_bundle: error: ${error.message}`);
    return error.exitCode;
  }
  const ok = result.problems.length === 0;
  if (asJson) {
    console.log(
      pythonJson({
        ok,
        events_checked: result.eventsChecked,
        head_hash: result.headHash,
        public_key_fingerprint: result.fingerprint,
        problems: result.problems.map((p) => ({ seq: p.seq, reason: p.reason })),
      }),
    );
  } else if (ok) {
    console.log(`ok: ${result.eventsChecked} event(s) verified; head ${result.headHash}`);
    console.log(
      `anchor: ${result.eventsChecked}:${result.headHash} (note it; check a later log with --anchor to detect one cut back or rewritten since)`,
    );
    console.log(
      `signed with the key whose fingerprint is ${result.fingerprint}: compare it with the one the gateway's operator published`,
    );
    for (const anchor of anchors) {
      if (anchor.signed && anchor.timestamped) {
        console.log(
          `anchor ${anchor.name}: its RFC 3161 timestamp was not checked (this verifier does not check them: \`gateway audit verify --tsa-cert\` does)`,
        );
      }
    }
  } else {
    for (const problem of result.problems) console.log(describe(problem));
  }
  if (!ok) {
    console.error(`verify_bundle: error: audit log verification failed: ${describe(result.problems[0])}`);
    return 8;
  }
  return 0;
}

// Run as a command, not when imported.
const invoked = process.argv[1] && existsSync(process.argv[1]) ? realpathSync(process.argv[1]) : "";
if (import.meta.url === pathToFileURL(invoked).href) process.exitCode = main(process.argv.slice(2));
