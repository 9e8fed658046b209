"""The spec's Python verifier, run against a real delivery.

Usage: python3 verify_kamiyo.py BODY_FILE HEADERS_JSON_FILE SECRET
Exit 0 when the signature verifies and the body parses, 1 when it does not.
"""
import hashlib
import hmac
import json
import sys


class Headers:
    """Case-insensitive like Werkzeug's headers."""

    def __init__(self, headers):
        self._headers = {k.lower(): v for k, v in headers.items()}

    def get(self, name, default=None):
        return self._headers.get(name.lower(), default)


class Request:
    """Just enough of Flask's request for the spec's example."""

    def __init__(self, body, headers):
        self._body = body
        self.headers = Headers(headers)

    def get_data(self, as_text=False):
        return self._body.decode("utf-8") if as_text else self._body

    def get_json(self):
        return json.loads(self._body)


# --- verbatim from spec/user-webhooks.md ---------------------------------
def verify_webhook(request, secret):
    # Get signature from header
    signature = request.headers.get('X-Kamiyo-Signature')

    # Get raw body
    payload = request.get_data(as_text=True)

    # Calculate expected signature
    expected = hmac.new(
        secret.encode(),
        payload.encode(),
        hashlib.sha256
    ).hexdigest()

    # Compare (constant-time comparison)
    return hmac.compare_digest(signature, expected)
# --------------------------------------------------------------------------


def main():
    body_path, headers_path, secret = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(body_path, "rb") as f:
        body = f.read()
    with open(headers_path, encoding="utf-8") as f:
        headers = json.load(f)
    request = Request(body, headers)
    if not verify_webhook(request, secret):
        print("Invalid signature", file=sys.stderr)
        return 1
    data = request.get_json()
    exploit = data["exploit"]
    print(f"verified {data['event']} for exploit {exploit['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
