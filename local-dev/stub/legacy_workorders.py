#!/usr/bin/env python3
"""Legacy work-order system stub for the local stack (standard library only).

The information system that pipelines/overload-work-orders.toml calls: a SOAP 1.1 endpoint
that takes one overload event as a work-order request and answers an acknowledgement document
(docs/flows/overload-work-orders.md).

    POST /soap/work-orders      SOAP 1.1 (Content-Type text/xml, SOAPAction
                                "urn:gridflow:legacy:work-orders:1#SubmitOverload"):
                                200 with SubmitOverloadResponse/Acknowledgement, whose Code is
                                ACCEPTED (with the order's number) or REFUSED (with a Reason)
    GET  /orders                the accepted orders, JSON, oldest first (?correlation_id=...
                                keeps those whose X-Correlation-ID was that)
    GET  /health                200 {"status": "ok"}

A request is REFUSED (still HTTP 200, as the real system does) when its meter is not one the
system knows (the meters of the asset registry stub) or when ValueKwh is not above
MaxIntervalKwh. Faults, chosen by the meter id, for trying the error model:

    ...-503     answers 503 Service Unavailable (a transient fault: gridflow retries)
    ...-SLOW    answers after LEGACY_SLOW_SECONDS (default 30 s: longer than the sink's timeout)

A request that is not a SOAP 1.1 SubmitOverload (wrong Content-Type or SOAPAction, XML that
does not parse) gets 500 with a SOAP Fault, as the real system answers.

    python3 local-dev/stub/legacy_workorders.py --host 127.0.0.1 --port 18082
"""

import argparse
import json
import os
import sys
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WO_NS = "urn:gridflow:legacy:work-orders:1"
SOAP_ACTION = f'"{WO_NS}#SubmitOverload"'

# The meters of local-dev/stub/asset_registry.py.
KNOWN_METERS = {"FR-PRM-09182736450011", "FR-PRM-09182736450012", "FR-PRM-30012457889903"}


def envelope(body_xml):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body>{body_xml}</soap:Body></soap:Envelope>'
    ).encode()


def acknowledgement(code, reason="", order=""):
    return envelope(
        f'<wo:SubmitOverloadResponse xmlns:wo="{WO_NS}"><wo:Acknowledgement>'
        f"<wo:Code>{code}</wo:Code><wo:Reason>{escape(reason)}</wo:Reason>"
        f"<wo:OrderNumber>{order}</wo:OrderNumber>"
        "</wo:Acknowledgement></wo:SubmitOverloadResponse>"
    )


def fault(reason):
    return envelope(
        f"<soap:Fault><faultcode>soap:Client</faultcode><faultstring>{escape(reason)}</faultstring></soap:Fault>"
    )


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Handler(BaseHTTPRequestHandler):
    server_version = "legacy-work-orders-stub/1"
    protocol_version = "HTTP/1.1"
    orders = []
    lock = threading.Lock()
    slow_seconds = 30.0

    def _send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            self._send(200, json.dumps({"status": "ok"}).encode(), "application/json")
        elif url.path == "/orders":
            wanted = parse_qs(url.query).get("correlation_id")
            with self.lock:
                orders = [o for o in self.orders if not wanted or o["correlation_id"] in wanted]
            self._send(200, json.dumps(orders).encode(), "application/json")
        else:
            self._send(404, json.dumps({"detail": f"no route {url.path}"}).encode(), "application/json")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if urlsplit(self.path).path != "/soap/work-orders":
            self._send(404, json.dumps({"detail": f"no route {self.path}"}).encode(), "application/json")
            return
        xml = "text/xml; charset=utf-8"
        if not (self.headers.get("Content-Type") or "").startswith("text/xml"):
            self._send(500, fault("SOAP 1.1 needs Content-Type text/xml"), xml)
            return
        if self.headers.get("SOAPAction") != SOAP_ACTION:
            self._send(500, fault(f"unknown SOAPAction {self.headers.get('SOAPAction')}"), xml)
            return
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            self._send(500, fault(f"malformed XML: {e}"), xml)
            return
        request = root.find(f"{{{SOAP_NS}}}Body/{{{WO_NS}}}SubmitOverload")
        if request is None:
            self._send(500, fault("no SubmitOverload in the SOAP Body"), xml)
            return
        field = lambda name: (request.findtext(f"{{{WO_NS}}}{name}") or "").strip()
        meter = field("MeterId")
        if meter.endswith("-503"):
            self._send(503, b"", "text/plain")
            return
        if meter.endswith("-SLOW"):
            time.sleep(self.slow_seconds)
        try:
            value, limit = float(field("ValueKwh")), float(field("MaxIntervalKwh"))
        except ValueError:
            self._send(200, acknowledgement("REFUSED", "ValueKwh and MaxIntervalKwh must be numbers"), xml)
            return
        if meter not in KNOWN_METERS:
            self._send(200, acknowledgement("REFUSED", f"unknown meter {meter}"), xml)
            return
        if value <= limit:
            self._send(200, acknowledgement("REFUSED", f"{value} kWh is not above the limit of {limit} kWh"), xml)
            return
        with self.lock:
            number = f"WO-{len(self.orders) + 1:06d}"
            self.orders.append(
                {
                    "order": number,
                    "meter_id": meter,
                    "value_kwh": value,
                    "max_interval_kwh": limit,
                    "measured_at": field("MeasuredAt"),
                    "correlation_id": self.headers.get("X-Correlation-ID") or field("CorrelationId"),
                }
            )
        self._send(200, acknowledgement("ACCEPTED", order=number), xml)

    def log_message(self, fmt, *args):
        sys.stderr.write("legacy-work-orders: %s %s\n" % (self.address_string(), fmt % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("STUB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUB_PORT", "18082")))
    args = parser.parse_args()
    Handler.slow_seconds = float(os.environ.get("LEGACY_SLOW_SECONDS", "30"))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    sys.stderr.write(f"legacy-work-orders: listening on {args.host}:{server.server_port}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
