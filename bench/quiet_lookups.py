"""What a silence or an inhibit rule costs each routed event, as they pile up (issue 24).

Run: `python bench/quiet_lookups.py` (a few seconds, pure CPU, no broker). Every routed
alert event asks the silences read (`Silences.matching`) and the inhibit rules' firing
sources (`FiringSources.inhibition`) whether they mute it, on the poll thread, and again at
each delivery's turn. Reported per look, as a ratio against a raw baseline measured in the
same run (building the label set the look is asked about, `labels_of`):

- silences: N active silences `service="svc-i", env=~"prod|staging"`, an alert matching
  none of them (the common case: its cost must not follow N);
- inhibition: N firing sources `NodeDown` sharing one `zone` (equal: [zone]) and a warning
  of that zone (the storm case: a target inhibited by the first source named).
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.inhibition import FiringSource, FiringSources, InhibitRule
from streamer.label_matchers import label_matcher
from streamer.silence_index import Silences, labels_of
from streamer.silences import Silence, parse_matchers

LOOKS = 500


def per_look(look) -> float:
    start = time.perf_counter()
    for _ in range(LOOKS):
        look()
    return (time.perf_counter() - start) / LOOKS


def main() -> None:
    now = datetime.now(UTC)
    event = {"labels": {"service": "other", "env": "prod"}}
    baseline = per_look(lambda: labels_of(event))
    print(f"baseline (labels_of): {baseline * 1e6:.2f} us")
    for n in (100, 1_000, 10_000):
        silences = []
        for i in range(n):
            matchers, _ = parse_matchers([f'service="svc-{i}"', 'env=~"prod|staging"'])
            silences.append(Silence.new(matchers, duration=timedelta(hours=1), at=now))
        book, labels = Silences(silences), labels_of(event)
        t = per_look(lambda book=book, labels=labels: book.matching(labels, now))
        print(f"silences {n:>6}: {t * 1e6:8.1f} us a look, {t / baseline:8.1f}x the baseline")
    rule = InhibitRule(
        "node-down",
        source=(label_matcher("alertname", "=", "NodeDown"),),
        target=(label_matcher("severity", "=", "warning"),),
        equal=("zone",),
    )
    target = {"severity": "warning", "zone": "z0"}
    for n in (1_000, 10_000, 100_000):
        board = FiringSources(limit=n)
        board.use_rules((rule,))
        for i in range(n):
            labels = {"alertname": "NodeDown", "node": f"n{i}", "zone": "z0"}
            board.fire(FiringSource(labels, 0.0, 1e12))
        t = per_look(lambda board=board: board.inhibition((rule,), target, 1.0))
        print(f"sources  {n:>6}: {t * 1e6:8.1f} us a look, {t / baseline:8.1f}x the baseline")


if __name__ == "__main__":
    main()
