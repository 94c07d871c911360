#!/usr/bin/env python3
"""Asset registry stub for the local stack (standard library only).

Answers what an `enrich` step of a gridflow pipeline calls (docs/worked-example.md):

    GET /meters/<meter_id>      the meter's asset record, JSON, 200
    GET /v2/meters/<meter_id>   the same (the path of the worked example meter-reading-routing)
    unknown meter               404, application/problem+json
    GET /health                 200 {"status": "ok"}

With ASSET_REGISTRY_TOKEN set, a request must carry `Authorization: Bearer <token>`: a missing
or different token gets 403 (the "token refused" case of section 9). ASSETS_FILE names a JSON
file {"<meter_id>": {...}, ...} that replaces the built-in records.

    python3 local-dev/stub/asset_registry.py --host 127.0.0.1 --port 18081
"""

import argparse
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ASSETS = {
    # The meter of runtime/tests/fixtures/samples/meter/reading.json and of the worked example.
    "FR-PRM-09182736450011": {
        "meter_id": "FR-PRM-09182736450011",
        "connection_kva": 9,
        "max_interval_kwh": 2.25,
        "substation": "SS-118",
        "feeder": "F-0412",
    },
    "FR-PRM-09182736450012": {
        "meter_id": "FR-PRM-09182736450012",
        "connection_kva": 6,
        "max_interval_kwh": 1.5,
        "substation": "SS-118",
        "feeder": "F-0412",
    },
    "FR-PRM-30012457889903": {
        "meter_id": "FR-PRM-30012457889903",
        "connection_kva": 36,
        "max_interval_kwh": 9.0,
        "substation": "SS-204",
        "feeder": "F-0907",
    },
}

METER_PATH = re.compile(r"^/(?:v2/)?meters/([^/]+)$")


def load_assets():
    path = os.environ.get("ASSETS_FILE")
    if not path:
        return ASSETS
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Handler(BaseHTTPRequestHandler):
    server_version = "asset-registry-stub/1"
    assets = ASSETS
    token = None

    def _send(self, status, body, content_type="application/json"):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _problem(self, status, title, detail):
        self._send(
            status,
            {"type": "about:blank", "title": title, "status": status, "detail": detail},
            "application/problem+json",
        )

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, {"status": "ok", "meters": len(self.assets)})
            return
        match = METER_PATH.match(path)
        if not match:
            self._problem(404, "Not Found", f"no route {path}")
            return
        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._problem(403, "Forbidden", "missing or unknown bearer token")
            return
        meter_id = match.group(1)
        asset = self.assets.get(meter_id)
        if asset is None:
            self._problem(404, "Not Found", f"unknown meter {meter_id}")
            return
        self._send(200, asset)

    def log_message(self, fmt, *args):
        sys.stderr.write("asset-registry: %s %s\n" % (self.address_string(), fmt % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("STUB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUB_PORT", "18081")))
    args = parser.parse_args()
    Handler.assets = load_assets()
    Handler.token = os.environ.get("ASSET_REGISTRY_TOKEN") or None
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    sys.stderr.write(f"asset-registry: listening on {args.host}:{server.server_port}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
