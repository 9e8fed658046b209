// The spec's Node.js verifier, run against a real delivery the way an
// Express app with express.json() sees it: the body is parsed, and the
// verifier signs JSON.stringify(req.body).
//
// Usage: node verify_kamiyo.js BODY_FILE HEADERS_JSON_FILE SECRET
// Exit 0 when the signature verifies and the body re-serialises to exactly
// the bytes received; 1 otherwise. Prints the key order on stdout.
'use strict';
const crypto = require('crypto');
const fs = require('fs');

// --- verbatim from spec/user-webhooks.md ---------------------------------
function verifyWebhook(req, secret) {
  const signature = req.headers['x-kamiyo-signature'];
  const payload = JSON.stringify(req.body);

  const expected = crypto
    .createHmac('sha256', secret)
    .update(payload)
    .digest('hex');

  return crypto.timingSafeEqual(
    Buffer.from(signature),
    Buffer.from(expected)
  );
}
// --------------------------------------------------------------------------

const [bodyPath, headersPath, secret] = process.argv.slice(2);
const raw = fs.readFileSync(bodyPath); // a Buffer, decoded below like body-parser does
const headers = {};
for (const [k, v] of Object.entries(JSON.parse(fs.readFileSync(headersPath, 'utf8')))) {
  headers[k.toLowerCase()] = v;
}
const text = raw.toString('utf8');
const req = { headers, body: JSON.parse(text) };

let ok;
try {
  ok = verifyWebhook(req, secret);
} catch (e) {
  // timingSafeEqual throws when the lengths differ.
  console.error(`verifyWebhook threw: ${e.message}`);
  ok = false;
}
const reencoded = JSON.stringify(req.body);
const identical = Buffer.from(reencoded, 'utf8').equals(raw);
console.log(JSON.stringify({
  keys: Object.keys(req.body),
  exploit_keys: Object.keys(req.body.exploit || {}),
  identical,
}));
if (!identical) {
  console.error(`JSON.stringify(JSON.parse(body)) differs from the body:\n  sent: ${text}\n  node: ${reencoded}`);
}
if (!ok) {
  console.error('Invalid signature');
}
process.exit(ok && identical ? 0 : 1);
