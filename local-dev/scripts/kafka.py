#!/usr/bin/env python3
"""Tiny Kafka producer for the local stack: gridflow has no produce subcommand, and the
Kafka-sourced pipeline (pipelines/meter-readings.toml) needs a raw record on its input topic.

Uses confluent-kafka (PyPI; its wheels bundle a current librdkafka, which tansu needs: it
refuses clients built on old ones). lib.sh installs it into local-dev/.state/venv.

    kafka.py produce --brokers 127.0.0.1:19092 --topic energy.meter.reading.raw.v1 \
        --key FR-PRM-09182736450011 --header gridflow.correlation_id=verify-1 \
        --file local-dev/fixtures/meter-reading-raw.json

The file's JSON is sent compacted as one record (`--file -`: standard input). Exit 0 once
the broker acknowledged the record, 1 otherwise.
"""

import argparse
import json
import sys


def produce(args):
    from confluent_kafka import Producer

    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    try:
        value = json.dumps(json.loads(text), separators=(",", ":")).encode()
    except ValueError:
        value = text.encode()
    headers = []
    for h in args.header:
        name, sep, val = h.partition("=")
        if not sep:
            sys.exit(f"kafka.py: --header {h!r}: expected NAME=VALUE")
        headers.append((name, val.encode()))
    outcome = {}

    def delivered(err, msg):
        outcome["err"] = err
        outcome["msg"] = msg

    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True,
                         "acks": "all", "message.timeout.ms": args.timeout_ms})
    producer.produce(args.topic, value=value, key=args.key.encode() if args.key else None,
                     headers=headers, on_delivery=delivered)
    producer.flush(args.timeout_ms / 1000 + 5)
    if outcome.get("err") is not None or "msg" not in outcome:
        print(f"kafka.py: not delivered to {args.topic}: {outcome.get('err', 'timeout')}",
              file=sys.stderr)
        return 1
    msg = outcome["msg"]
    print(f"produced {msg.topic()}/{msg.partition()}/{msg.offset()}")
    return 0


def main():
    parser = argparse.ArgumentParser(description="Kafka helper of local-dev/")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce", help="produce one record")
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--key")
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE, repeatable")
    p.add_argument("--file", default="-")
    p.add_argument("--timeout-ms", type=int, default=10000)
    args = parser.parse_args()
    if args.command == "produce":
        sys.exit(produce(args))


if __name__ == "__main__":
    main()
