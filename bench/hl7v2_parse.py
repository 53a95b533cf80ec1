"""HL7 v2 parsing speed: python-hl7 against a plain split tokenizer, beside what the hub
does with a message after parsing (mapping and validation), on one core.

Three messages: a small ADT^A01 (~0.5 KB), the IG's ORU^R01 (~3.5 KB) and a 4 KB ORU^R01
of the same result repeated. Each figure is messages a second over `--seconds` of work
(best of three runs):

- `python-hl7`: `hl7.parse` alone, the tokenizer the hub uses;
- `split`: the same message cut with `str.split` on the five delimiters (no escapes, no
  MSH special case): what a tokenizer of our own could do at best;
- `hub parse`: `adapters.hl7v2.parse.parse` (python-hl7, regular lists, escapes decoded,
  character set);
- `map`: choosing the message map and mapping the parsed tree;
- `validate`: validating the mapped resources (fhir.resources), as `prepare` does.

    .venv/bin/python bench/hl7v2_parse.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hl7

from adapters.hl7v2 import Hl7v2Adapter
from adapters.hl7v2.parse import parse
from hub.fhir import validate

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "hl7v2"

SMALL_ADT = "\r".join(
    [
        "MSH|^~\\&|EPIC|NORTH|HUB|HUB|20240615130000+0200||ADT^A01^ADT_A01|MSG00001|P|2.5.1",
        "EVN|A01|20240615130000",
        "PID|1||MRN-001^^^NORTH&1.2.3.4&ISO^MR||Doe^Jane^Marie||19850615|F|||12 Elm St^^Springfield"
        "^IL^62701^USA^H||^PRN^PH^^1^217^5551234",
        "PV1|1|I|ICU^001^01||||1234567890^Smith^John^^^Dr^^^NPI&2.16.840.1.113883.4.6&ISO|||MED"
        "||||||||V-1001^^^NORTH&1.2.3.4&ISO^VN|||||||||||||||||||||||||20240615120000",
    ]
)


def _four_kb_oru() -> str:
    ig = (DATA / "ig-ORU_R01.hl7").read_bytes().decode("utf-8").rstrip("\r")
    segments = ig.split("\r")
    obx = [s for s in segments if s.startswith("OBX")]
    head = [s for s in segments if not s.startswith("OBX")]
    body = list(head)
    number = 0
    while len("\r".join(body)) < 4096:
        for segment in obx:
            number += 1
            fields = segment.split("|")
            fields[1] = str(number)
            body.append("|".join(fields))
    return "\r".join(body)


def split_tokenize(text: str) -> list[list[list[list[list[str]]]]]:
    return [
        [[[c.split("&") for c in r.split("^")] for r in f.split("~")] for f in segment.split("|")]
        for segment in text.split("\r")
        if segment
    ]


def rate(work: Callable[[], Any], seconds: float) -> float:
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for _ in range(20):
                work()
            done += 20
        best = max(best, done / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    adapter = Hl7v2Adapter()
    messages = {
        "small ADT^A01": SMALL_ADT,
        "IG ORU^R01": (DATA / "ig-ORU_R01.hl7").read_bytes().decode("utf-8"),
        "4 KB ORU^R01": _four_kb_oru(),
    }
    print(f"python {platform.python_version()}, python-hl7 {hl7.__version__}, one core")
    header = (
        f"{'message':<14} {'bytes':>6} {'python-hl7':>11} {'split':>9} {'hub parse':>10}"
        f" {'map':>8} {'validate':>9} {'parse share':>12}"
    )
    print(header)
    for name, text in messages.items():
        raw = text.encode("utf-8")
        tree = parse(raw)
        mapper = adapter.mapper_for(tree)
        mapped = mapper.map(tree)
        figures = {
            "python-hl7": rate(lambda: hl7.parse(text), args.seconds),  # noqa: B023
            "split": rate(lambda: split_tokenize(text), args.seconds),  # noqa: B023
            "hub parse": rate(lambda: parse(raw), args.seconds),  # noqa: B023
            "map": rate(lambda: mapper.map(tree), args.seconds),  # noqa: B023
            "validate": rate(
                lambda: [validate(r) for r in mapped.resources],  # noqa: B023
                args.seconds,
            ),
        }
        per_message = {k: 1 / v for k, v in figures.items()}
        share = per_message["hub parse"] / (
            per_message["hub parse"] + per_message["map"] + per_message["validate"]
        )
        print(
            f"{name:<14} {len(raw):>6} {figures['python-hl7']:>11,.0f} {figures['split']:>9,.0f}"
            f" {figures['hub parse']:>10,.0f} {figures['map']:>8,.0f}"
            f" {figures['validate']:>9,.0f} {share:>11.0%}"
        )


if __name__ == "__main__":
    main()
