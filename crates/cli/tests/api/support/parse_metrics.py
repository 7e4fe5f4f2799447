"""Parses a Prometheus text exposition read from stdin with prometheus_client's own parser and
prints every sample as JSON: [{"name", "labels", "value"}]. A malformed exposition raises, and
the test that ran this fails with the parser's message."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    samples = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        for sample in family.samples:
            samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value})
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
