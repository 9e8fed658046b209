"""Checks a delivery with the Standard Webhooks reference library.

Needs: pip install standardwebhooks
Usage: python3 verify_standard.py BODY_FILE HEADERS_JSON_FILE SECRET
Exit 0 when verified, 1 when the library rejects it, 3 when the library is missing.
"""
import json
import sys

try:
    from standardwebhooks import Webhook
except ImportError:
    print("standardwebhooks is not installed", file=sys.stderr)
    sys.exit(3)


def main():
    body_path, headers_path, secret = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(body_path, "rb") as f:
        body = f.read()
    with open(headers_path, encoding="utf-8") as f:
        headers = json.load(f)
    try:
        data = Webhook(secret).verify(body, headers)
    except Exception as e:  # WebhookVerificationError and friends
        print(f"rejected: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"verified {data['event']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
