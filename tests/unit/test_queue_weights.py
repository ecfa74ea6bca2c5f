"""Weighted queues (issue #19): parsing `queues:` and `--queue`, and the rotation's order."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from farm import manifest
from farm.errors import ManifestError
from farm.queuespec import flag, parse_flag
from farm.worker.options import merge
from farm.worker.weights import Rotation

WEIGHTS = {"critical": 6, "default": 3, "low": 1}


def _manifest(tmp_path, queues: str):
    (tmp_path / "conf").mkdir(exist_ok=True)
    p = tmp_path / "conf" / "farm.yaml"
    p.write_text(textwrap.dedent(f"""\
        imports: [farm.demo]
        connections:
          database: {{driver: database, url: "sqlite:///x.db"}}
        pipelines:
          w:
            queues: {queues}
        """))
    return p


# -- parsing ---------------------------------------------------------------------------------
def test_a_mapping_of_queues_is_a_weighted_pipeline_whose_queues_are_still_its_names(tmp_path):
    m = manifest.load(_manifest(tmp_path, "{critical: 6, default: 3, low: 1}"))
    p = m.pipelines["w"]
    assert p.queues == ("critical", "default", "low")        # status, metrics, KEDA read these
    assert p.weights == (6, 3, 1)
    assert p.queue_args == ["--queue", "critical:6,default:3,low:1"]


def test_a_list_of_queues_keeps_strict_order_and_renders_no_queue_flag(tmp_path):
    p = manifest.load(_manifest(tmp_path, "[critical, default]")).pipelines["w"]
    assert (p.queues, p.weights, p.queue_args) == (("critical", "default"), (), [])


def test_a_weight_given_by_a_variable_is_read_as_a_number(tmp_path, monkeypatch):
    monkeypatch.setenv("W_LOW", "2")
    path = _manifest(tmp_path, "{high: 5, low: 1}")
    path.write_text(path.read_text().replace("{high: 5, low: 1}", "\n      high: 5\n      low: ${W_LOW}"))
    p = manifest.load(path).pipelines["w"]
    assert p.weights == (5, 2)


@pytest.mark.parametrize("queues, message", [
    ("{a: 0, b: 1}", "queue 'a': weight 0 is not a positive integer"),
    ("{a: -2}", "queue 'a': weight -2 is not a positive integer"),
    ("{a: 1.5}", "queue 'a': weight 1.5 is not a positive integer"),
    ("{a: yes}", "queue 'a': weight True is not a positive integer"),
    ("{a: '3'}", "queue 'a': weight '3' is not a positive integer"),
    ("{a: 1, a: 2}", "queue 'a' is listed twice"),
    ("[a, a]", "queue 'a' is listed twice"),
    ("{}", "expected at least one queue"),
    ("{a: [1]}", "queue 'a': weight [1] is not a positive integer"),
])
def test_a_bad_weighted_queues_entry_is_one_line_with_its_line_number(tmp_path, queues, message):
    with pytest.raises(ManifestError) as e:
        manifest.load(_manifest(tmp_path, queues))
    lines = str(e.value).splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"/conf/farm.yaml:6: pipelines.w.queues: {message}"), lines


@pytest.mark.parametrize("text, expected", [
    ("a,b", (("a", "b"), ())),
    (" a , b ", (("a", "b"), ())),
    ("critical:6,default:3,low:1", (("critical", "default", "low"), (6, 3, 1))),
    ("a:1", (("a",), (1,))),
])
def test_the_queue_flag_is_strict_or_weighted(text, expected):
    assert parse_flag(text) == expected
    assert parse_flag(flag(*expected)) == expected


@pytest.mark.parametrize("text, message", [
    ("a:6,b", "'a:6,b': give every queue a weight (a:6,b:3) or none (a,b)"),
    ("a,b:2", "'a,b:2': give every queue a weight (a:6,b:3) or none (a,b)"),
    ("a:0", "queue 'a': weight '0' is not a positive integer"),
    ("a:-1", "queue 'a': weight '-1' is not a positive integer"),
    ("a:1.5", "queue 'a': weight '1.5' is not a positive integer"),
    ("a:x", "queue 'a': weight 'x' is not a positive integer"),
    ("a:", "queue 'a': weight '' is not a positive integer"),
    ("a:2,a:1", "queue 'a' is listed twice"),
    ("a,a", "queue 'a' is listed twice"),
    (":3", "'' is not a queue name"),
    (",", "expected a comma-separated list of queue names"),
])
def test_a_bad_queue_flag_says_what_is_wrong(text, message):
    with pytest.raises(ValueError) as e:
        parse_flag(text)
    assert str(e.value) == message


def test_farmctl_work_refuses_a_bad_queue_flag_with_one_line_and_status_2(tmp_path):
    cp = subprocess.run([sys.executable, "-m", "farm", "work", "--config", str(_manifest(tmp_path, "[a]")),
                         "--queue", "a:6,b"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2
    assert cp.stderr.strip().splitlines()[-1] == \
        "farmctl: Invalid value for '--queue': 'a:6,b': give every queue a weight (a:6,b:3) or none (a,b)"


def test_the_flag_beats_the_pipeline_weights_both_ways(tmp_path):
    m = manifest.load(_manifest(tmp_path, "{critical: 6, low: 1}"))
    assert merge(m, {"pipeline": "w"}).weights == (6, 1)
    strict = merge(m, {"pipeline": "w", "queues": parse_flag("low,critical")})
    assert (strict.queues, strict.weights) == (("low", "critical"), ())
    weighted = merge(m, {"queues": parse_flag("x:2,y:1")})
    assert (weighted.queues, weighted.weights, weighted.queue_flag) == (("x", "y"), (2, 1), "x:2,y:1")


# -- the rotation ----------------------------------------------------------------------------
def test_the_rotation_gives_each_queue_its_share_of_picks_within_one_over_any_run():
    r = Rotation(list(WEIGHTS), list(WEIGHTS.values()))
    seen: Counter[str] = Counter()
    for n in range(1, 1001):
        seen[r.pick()] += 1
        for name, w in WEIGHTS.items():
            assert abs(seen[name] - n * w / 10) <= 1, (n, seen)
    assert seen == {"critical": 600, "default": 300, "low": 100}


def test_the_rotation_is_smooth_and_deterministic():
    # nginx's smooth weighted round-robin of 6/3/1: no queue waits a whole cycle
    heads = [Rotation(list(WEIGHTS), list(WEIGHTS.values())) for _ in range(2)]
    first = [heads[0].pick() for _ in range(10)]
    assert first == [heads[1].pick() for _ in range(10)]
    assert first == ["critical", "default", "critical", "critical", "default", "critical", "low",
                     "critical", "default", "critical"]


def test_the_order_is_every_queue_by_how_far_behind_its_share_it_is():
    r = Rotation(["low", "critical", "default"], [1, 6, 3])
    assert r.order() == r.order() == ("critical", "default", "low")      # looking takes no turn
    orders = [r.next_order() for _ in range(10)]
    assert orders[0] == ("critical", "default", "low")
    assert orders[1] == ("default", "low", "critical")      # critical just served: last
    assert ("low", "critical", "default") in orders
    assert all(sorted(o) == ["critical", "default", "low"] for o in orders)


def test_an_empty_heavy_queue_leaves_the_others_their_ratio_to_each_other():
    # Given critical empty (never paused: the worker finds it empty at each claim) while
    # default and low have a backlog
    r = Rotation(list(WEIGHTS), list(WEIGHTS.values()))
    seen: Counter[str] = Counter()
    for _ in range(2000):
        order = r.order()
        served = next(n for n in order if n != "critical")
        r.took(order, {served: 1})
        seen[served] += 1
    # Then default and low share its turns 3 : 1, not all to the next heaviest
    assert abs(seen["low"] / sum(seen.values()) - 0.25) <= 0.01, seen


def test_a_paused_queue_is_left_out_and_the_others_keep_their_ratio():
    r = Rotation(list(WEIGHTS), list(WEIGHTS.values()))
    live = ("default", "low")                       # critical paused (farmctl pause critical)
    orders = [r.next_order(live) for _ in range(400)]
    assert all("critical" not in o and len(o) == 2 for o in orders)
    assert Counter(o[0] for o in orders) == {"default": 300, "low": 100}
    # resumed: critical takes part again, and its picks catch up to no more than its weight
    heads = Counter(r.pick() for _ in range(1000))
    assert all(abs(heads[n] - 100 * w) <= 2 for n, w in WEIGHTS.items()), heads


def test_a_claim_is_sized_by_its_heads_weight():
    r = Rotation(list(WEIGHTS), list(WEIGHTS.values()))
    assert [r.limit(n, 100) for n in WEIGHTS] == [100, 50, 17]
    assert [r.limit(n, 1) for n in WEIGHTS] == [1, 1, 1]


def claims(r: Rotation, size: int, jobs: int, short: dict[int, int] | None = None) -> Counter[str]:
    """Drive the rotation as a worker does over a backlog of every queue: claim, credit."""
    seen: Counter[str] = Counter()
    n = 0
    while sum(seen.values()) < jobs:
        order = r.order()
        got = min(r.limit(order[0], size), (short or {}).get(n, size))
        r.took(order, {order[0]: got})
        seen[order[0]] += got
        n += 1
    return seen


def test_shares_per_job_hold_with_claims_sized_by_weight_and_some_short():
    # full claims: 100/50/17 a round, so 6:3:1 within a claim of each queue
    seen = claims(Rotation(list(WEIGHTS), list(WEIGHTS.values())), 100, 10_000)
    assert all(abs(seen[n] / sum(seen.values()) - w / 10) <= 0.005 for n, w in WEIGHTS.items()), seen
    # every third claim short (3 jobs): credited per job, the shares do not drift
    seen = claims(Rotation(list(WEIGHTS), list(WEIGHTS.values())), 100, 10_000, {i: 3 for i in range(0, 10**4, 3)})
    assert all(abs(seen[n] / sum(seen.values()) - w / 10) <= 0.01 for n, w in WEIGHTS.items()), seen


def test_a_queue_found_empty_keeps_no_credit_for_the_time_it_had_nothing():
    # Given low empty for 100 claims (each came from the next queue of the order)
    r = Rotation(list(WEIGHTS), list(WEIGHTS.values()))
    for _ in range(100):
        order = r.order()
        served = next(n for n in order if n != "low")
        r.took(order, {served: r.limit(order[0], 10)})
    # When it has jobs again, Then it gets its share from then on, not a burst that pays it back
    seen = claims(r, 10, 1000)
    assert abs(seen["low"] / sum(seen.values()) - 0.1) <= 0.02, seen


def test_a_rotation_needs_one_positive_weight_per_queue():
    with pytest.raises(ValueError):
        Rotation(["a", "b"], [1])
    with pytest.raises(ValueError):
        Rotation(["a"], [1]).pick(among=())
