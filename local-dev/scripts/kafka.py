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

For evidence (local-dev/scripts/30-generate-evidence.sh), three read-only subcommands that print
one JSON document on standard output (exit 0, 1 when the broker could not be asked):

    kafka.py api-versions --brokers B   the broker's ApiVersions answer (per API key, the
                                        versions it accepts), the client's librdkafka version
                                        and the cluster (id, controller, brokers)
    kafka.py topics --brokers B         every topic with its partition count (internal
                                        topics flagged), and with --catalog contracts/topics.toml
                                        the catalog's topics (and their .dlq) that are missing
    kafka.py lag --brokers B --pipelines DIR [--group G]... [--describe]
                                        per consumer group (the `[source] group` of DIR's
                                        Kafka pipelines, and each --group): per partition the
                                        committed offset, the high watermark and the lag;
                                        --describe: the group's state and members too

`lag` never joins a group: it only reads committed offsets (OffsetFetch) and watermarks
(ListOffsets), so the running consumers are not rebalanced. `--config-file FILE` adds
librdkafka properties (KEY=VALUE lines: security.protocol, sasl.*, ssl.*) for a secured
cluster; the raw ApiVersions question of `api-versions` is asked over plaintext only (on a TLS
or SASL listener it is reported as not available).
"""

import argparse
import json
import os
import re
import socket
import struct
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


# ---- evidence: read-only subcommands -------------------------------------------------------

# Names of the Kafka API keys the ApiVersions answer lists (the protocol's numbering).
API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
    9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup",
    14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake",
    18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 21: "DeleteRecords",
    22: "InitProducerId", 23: "OffsetForLeaderEpoch", 24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn", 26: "EndTxn", 27: "WriteTxnMarkers", 28: "TxnOffsetCommit",
    29: "DescribeAcls", 30: "CreateAcls", 31: "DeleteAcls", 32: "DescribeConfigs",
    33: "AlterConfigs", 34: "AlterReplicaLogDirs", 35: "DescribeLogDirs", 36: "SaslAuthenticate",
    37: "CreatePartitions", 38: "CreateDelegationToken", 39: "RenewDelegationToken",
    40: "ExpireDelegationToken", 41: "DescribeDelegationToken", 42: "DeleteGroups",
    43: "ElectLeaders", 44: "IncrementalAlterConfigs", 45: "AlterPartitionReassignments",
    46: "ListPartitionReassignments", 47: "OffsetDelete", 48: "DescribeClientQuotas",
    49: "AlterClientQuotas", 50: "DescribeUserScramCredentials",
    51: "AlterUserScramCredentials", 60: "DescribeCluster", 61: "DescribeProducers",
    65: "DescribeTransactions", 66: "ListTransactions", 68: "ConsumerGroupHeartbeat",
    69: "ConsumerGroupDescribe", 71: "GetTelemetrySubscriptions", 72: "PushTelemetry",
}


def first_broker(brokers):
    """(host, port) of the first bootstrap server of a comma-separated list."""
    server = brokers.split(",")[0].strip()
    server = re.sub(r"^[A-Za-z_]+://", "", server)
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {server!r}")
    return host.strip("[]"), int(port)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def raw_api_versions(host, port, timeout):
    """The broker's ApiVersions (v0) answer over a plaintext connection: [(key, min, max)].

    librdkafka asks the same question but does not expose the answer; v0 is accepted by every
    broker since Kafka 0.10 and needs no tagged fields."""
    client_id = b"gridflow-evidence"
    header = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(header)) + header)
        (size,) = struct.unpack(">i", recv_exact(sock, 4))
        body = recv_exact(sock, size)
    correlation_id, error_code, count = struct.unpack(">ihi", body[:10])
    if correlation_id != 1:
        raise ValueError(f"unexpected correlation id {correlation_id}")
    if error_code != 0:
        raise ValueError(f"ApiVersions error code {error_code}")
    apis = []
    for i in range(count):
        key, low, high = struct.unpack(">hhh", body[10 + 6 * i:16 + 6 * i])
        apis.append({"api_key": key, "name": API_NAMES.get(key, f"api-{key}"),
                     "min_version": low, "max_version": high})
    return sorted(apis, key=lambda a: a["api_key"])


def client_config(args, **extra):
    """bootstrap.servers, the properties of --config-file (librdkafka's KEY=VALUE lines, e.g.
    security.protocol and sasl.* for a secured cluster), then `extra`."""
    config = {"bootstrap.servers": args.brokers}
    if getattr(args, "config_file", None):
        with open(args.config_file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                key, sep, value = line.partition("=")
                if not sep:
                    sys.exit(f"kafka.py: {args.config_file}:{n}: expected KEY=VALUE")
                config[key.strip()] = value.strip()
    config.update(extra)
    return config


def admin_client(args):
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(args))


def cluster_of(metadata):
    return {
        "cluster_id": metadata.cluster_id,
        "controller_id": metadata.controller_id,
        "brokers": sorted(({"id": b.id, "host": b.host, "port": b.port}
                           for b in metadata.brokers.values()), key=lambda b: b["id"]),
    }


def api_versions(args):
    import confluent_kafka

    out = {"brokers": args.brokers,
           "client": {"confluent_kafka": confluent_kafka.__version__,
                      "librdkafka": confluent_kafka.libversion()[0]}}
    status = 0
    try:
        out["cluster"] = cluster_of(admin_client(args).list_topics(timeout=args.timeout_ms / 1000))
    except Exception as e:  # noqa: BLE001 - recorded in the evidence
        out["cluster_error"] = str(e)
        status = 1
    try:
        host, port = first_broker(args.brokers)
        out["api_versions_of"] = f"{host}:{port}"
        out["api_versions"] = raw_api_versions(host, port, args.timeout_ms / 1000)
    except Exception as e:  # noqa: BLE001 - e.g. a TLS or SASL listener: recorded, not fatal
        out["api_versions_error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out, indent=2))
    return status


def catalog_topics(path):
    """Names of the topics of a catalog (contracts/topics.toml) and their dead-letter topics."""
    import tomllib

    with open(path, "rb") as f:
        catalog = tomllib.load(f)
    names = []
    for topic in catalog.get("topic", []):
        names.append(expand(topic["name"]))
        if topic.get("dead_letter"):
            names.append(expand(topic["dead_letter"]))
    return names


def topics(args):
    try:
        metadata = admin_client(args).list_topics(timeout=args.timeout_ms / 1000)
    except Exception as e:  # noqa: BLE001
        print(f"kafka.py: cannot list the topics of {args.brokers}: {e}", file=sys.stderr)
        return 1
    listed = []
    for name in sorted(metadata.topics):
        t = metadata.topics[name]
        listed.append({"name": name, "partitions": len(t.partitions),
                       "internal": name.startswith("__"),
                       "error": str(t.error) if t.error is not None else None})
    out = {"brokers": args.brokers, "cluster": cluster_of(metadata), "topics": listed}
    if args.catalog:
        present = {t["name"] for t in listed}
        wanted = catalog_topics(args.catalog)
        out["catalog"] = args.catalog
        out["catalog_topics"] = len(wanted)
        out["catalog_missing"] = [n for n in wanted if n not in present]
    print(json.dumps(out, indent=2))
    return 0


def expand(text):
    """${NAME} and ${NAME:-default} from the environment, as gridflow interpolates its files."""
    def sub(m):
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            return m.group(3) or ""
        return value
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text)


def pipeline_groups(directory):
    """{group: {"pipelines": [...], "topics": [...]}} of the Kafka-sourced pipeline files of a
    directory (subdirectories included; files that do not parse are skipped)."""
    import tomllib

    groups = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            if not name.endswith(".toml"):
                continue
            try:
                with open(os.path.join(root, name), "rb") as f:
                    pipeline = tomllib.load(f)
            except (OSError, ValueError):
                continue
            source = pipeline.get("source")
            if not isinstance(source, dict) or source.get("kind") != "kafka" or not source.get("group"):
                continue
            group = groups.setdefault(expand(str(source["group"])), {"pipelines": [], "topics": []})
            group["pipelines"].append(pipeline.get("name", name))
            for topic in source.get("topics", []):
                topic = expand(str(topic))
                if topic not in group["topics"]:
                    group["topics"].append(topic)
    return groups


def lag(args):
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka import ConsumerGroupTopicPartitions

    groups = pipeline_groups(args.pipelines) if args.pipelines else {}
    for g in args.group:
        groups.setdefault(g, {"pipelines": [], "topics": []})
    admin = admin_client(args)
    timeout = args.timeout_ms / 1000
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as e:  # noqa: BLE001
        print(f"kafka.py: cannot reach {args.brokers}: {e}", file=sys.stderr)
        return 1
    out = {"brokers": args.brokers, "groups": []}
    status = 0
    for name in sorted(groups):
        info = groups[name]
        entry = {"group": name, "pipelines": info["pipelines"], "topics": info["topics"],
                 "partitions": [], "lag": 0, "partitions_without_commit": 0}
        entry["state"] = "not asked"
        if args.describe:
            try:
                desc = admin.describe_consumer_groups([name])[name].result(timeout)
                entry["state"] = str(desc.state).rsplit(".", 1)[-1]
                entry["members"] = len(desc.members)
            except Exception as e:  # noqa: BLE001 - a broker without DescribeGroups: noted
                entry["state"] = "unknown"
                entry["state_error"] = str(e)
        # Not subscribed, never joins the group: committed() is an OffsetFetch only.
        consumer = Consumer(client_config(args, **{"group.id": name, "enable.auto.commit": False}))
        try:
            topics_of_group = list(info["topics"])
            if not topics_of_group:
                # A group given by name: the topics it committed offsets for.
                listed = admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(name)])[name].result(timeout)
                topics_of_group = sorted({tp.topic for tp in listed.topic_partitions})
                entry["topics"] = topics_of_group
            wanted = []
            for topic in topics_of_group:
                t = metadata.topics.get(topic)
                if t is None or t.error is not None:
                    entry.setdefault("missing_topics", []).append(topic)
                    continue
                wanted += [TopicPartition(topic, p) for p in sorted(t.partitions)]
            committed = consumer.committed(wanted, timeout=timeout) if wanted else []
            for tp in committed:
                low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                           timeout=timeout)
                has_commit = tp.offset >= 0
                # Without a commit the group starts at the earliest record still held
                # (gridflow's auto.offset.reset), so all of them are behind.
                behind = high - (tp.offset if has_commit else low)
                entry["partitions"].append({
                    "topic": tp.topic, "partition": tp.partition,
                    "committed": tp.offset if has_commit else None,
                    "low_watermark": low, "high_watermark": high, "lag": max(behind, 0)})
                entry["lag"] += max(behind, 0)
                entry["partitions_without_commit"] += 0 if has_commit else 1
        except Exception as e:  # noqa: BLE001
            entry["error"] = str(e)
            status = 1
        finally:
            consumer.close()
        out["groups"].append(entry)
    print(json.dumps(out, indent=2))
    return status


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
    config_help = "librdkafka properties, KEY=VALUE a line (security.protocol, sasl.*, ssl.*)"
    p = sub.add_parser("api-versions", help="the broker's API versions and the cluster (JSON)")
    p.add_argument("--brokers", required=True)
    p.add_argument("--config-file", help=config_help)
    p.add_argument("--timeout-ms", type=int, default=10000)
    p = sub.add_parser("topics", help="topics and partition counts (JSON)")
    p.add_argument("--brokers", required=True)
    p.add_argument("--config-file", help=config_help)
    p.add_argument("--catalog", help="a topic catalog (contracts/topics.toml): report missing topics")
    p.add_argument("--timeout-ms", type=int, default=10000)
    p = sub.add_parser("lag", help="committed offsets and lag of consumer groups (JSON)")
    p.add_argument("--brokers", required=True)
    p.add_argument("--config-file", help=config_help)
    p.add_argument("--pipelines", help="directory of pipeline files: their Kafka sources' groups")
    p.add_argument("--group", action="append", default=[], help="a group, repeatable")
    p.add_argument("--describe", action="store_true",
                   help="also the group's state and members (DescribeGroups; tansu 0.6 "
                        "cannot answer it and drops the connection)")
    p.add_argument("--timeout-ms", type=int, default=10000)
    args = parser.parse_args()
    commands = {"produce": produce, "api-versions": api_versions, "topics": topics, "lag": lag}
    sys.exit(commands[args.command](args))


if __name__ == "__main__":
    main()
