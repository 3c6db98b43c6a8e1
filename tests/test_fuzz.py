"""The project's own fuzz test of hostile segments (issue 8 item 8; issue 13
items 6 and 7): seeded mutations of real layout-v2 segments, each run through
a bounded operation sequence in a forked child with a per-case bound.
tests/_fuzz.py has the machinery (and runs standalone: ``python
tests/_fuzz.py --cases 10000``).  Goal: 0 hangs, 0 crashes, no exception of
an unexpected type, no body longer than message_size, and with
checksum=True no body other than one that was written."""
import os

import pytest

import _fuzz as F


@pytest.fixture(scope="module")
def templates():
    return F.make_templates()


def _run(templates, directory, seed, start, n):
    s = F.run_cases(seed, start, start + n, templates, directory)
    print(s.line())
    return s


def _assert_clean(s):
    assert s.counts["hang"] == 0 and s.counts["crash"] == 0 and s.counts["unexpected"] == 0, \
        (s.line(), s.failures[:20])
    assert s.long == 0, (s.line(), s.failures[:20])            # never a body read past its slot
    assert s.wrong_checksummed == 0, (s.line(), s.failures[:20])  # checksum=True: never a changed body
    assert s.max_over_s < F.LATE_S, s.line()                  # every timeout honoured


def test_templates_are_real_v2_segments(templates):
    """The templates come from the real API and _layout.Raw agreed with the
    library's own view of each (make_templates checks); both kinds of queue
    are there, each with its dead-letter queue."""
    assert {t.checksum for t in templates.values()} == {False, True}
    for t in templates.values():
        g = F._geometry(t.seg)
        assert (g["cap"], g["msz"], g["maxc"]) == (F.CAP, F.MSZ, F.MAXC) and len(t.seg) == g["total"]
        assert F._geometry(t.dlq)["msz"] == F.DLQ_MSZ


def test_mutations_are_deterministic(templates):
    a = [F.make_case(7, i, templates) for i in range(50)]
    b = [F.make_case(7, i, templates) for i in range(50)]
    assert [(c["desc"], c["seg"], c["dlq"], c["live"]) for c in a] == \
        [(c["desc"], c["seg"], c["dlq"], c["live"]) for c in b]
    assert len({c["desc"].split()[0] for c in a}) > 8      # many kinds of mutation


@pytest.mark.timeout(120)
def test_fuzz_default(templates, ackring_dir):
    """1,000 cases in the default run (a few seconds on one core)."""
    s = _run(templates, ackring_dir, seed=1, start=0, n=1000)
    _assert_clean(s)
    assert s.cases == 1000
    assert s.counts["ok"] > 100 and s.counts["clean"] > 100   # the mutations do bite, and not always
    assert s.bodies > 1000


# Seeds/cases that once failed (regressions), with what they found.
REGRESSIONS = [
    (1, 22, "checksum=True, a payload byte changed: peek() showed the changed body (now CorruptedQueue)"),
    (1, 138, "the same through another template"),
]


@pytest.mark.parametrize("seed,idx,what", REGRESSIONS)
def test_fuzz_regression(templates, ackring_dir, seed, idx, what):
    s = _run(templates, ackring_dir, seed=seed, start=idx, n=1)
    _assert_clean(s)
    assert s.counts["clean"] == 1, what


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", [2, 3])
def test_fuzz_long(templates, ackring_dir, seed):
    """10,000+ cases per seed: ``python -m pytest -m slow tests/test_fuzz.py -s``."""
    s = _run(templates, ackring_dir, seed=seed, start=0, n=int(os.environ.get("ACKRING_FUZZ_CASES", 20000)))
    _assert_clean(s)
