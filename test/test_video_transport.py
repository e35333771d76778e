"""Video transport: fragments fit a datagram, any k of n rebuild the exact frame, frames are never
delivered late or twice, drops ask for a keyframe, parity sizing, pacing."""

import math
import random
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from telesurg.video.transport import (
    DEFAULT_PAYLOAD_BYTES,
    HEADER_BYTES,
    MAX_BLOCKS,
    FragmentHeader,
    FrameAssembler,
    Pacer,
    data_blocks,
    fragment_frame,
    frame_loss_probability,
    parity_blocks,
)

MS = 1_000_000
DEADLINE_NS = 100 * MS
#: Deterministic examples: a failure shows up on every run, not on one in a hundred.
EXAMPLES = settings(max_examples=60, deadline=None, derandomize=True)


def frame_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def header_bytes(number=1, stamp_ns=5, flags=0, k=2, n=3, index=0, length=10, block=5) -> bytes:
    """A header packed by hand, as the module docstring lays it out."""
    return struct.pack("!IQBHHHIH", number, stamp_ns, flags, k, n, index, length, block)


def feed(assembler, fragments, now_ns=0):
    """Every frame the fragments complete, in delivery order."""
    return [frame for fragment in fragments for frame in assembler.add(fragment, now_ns)]


# Fragments


@EXAMPLES
@given(size=st.integers(0, 120_000), payload=st.integers(HEADER_BYTES + 1, 1400),
       parity=st.integers(0, 8))
def test_every_fragment_fits_the_payload(size, payload, parity):
    k = data_blocks(size, payload)
    if k + parity > MAX_BLOCKS:
        with pytest.raises(ValueError, match="parity must be"):
            fragment_frame(1, 2, bytes(size), False, parity=parity, payload_bytes=payload)
        return
    fragments = fragment_frame(1, 2, bytes(size), False, parity=parity, payload_bytes=payload)
    assert len(fragments) == k + parity
    assert all(len(fragment) <= payload for fragment in fragments)
    # No more blocks than needed: k - 1 full blocks would not hold the frame.
    assert (k - 1) * (payload - HEADER_BYTES) < max(size, 1)


def test_fragments_carry_the_header_and_the_frame_in_order():
    data = frame_bytes(2500)
    fragments = fragment_frame(7, 123_456_789_000, data, True, parity=2, payload_bytes=1025)
    headers = [FragmentHeader.unpack(fragment) for fragment in fragments]

    # 2500 bytes in blocks of at most 1000 bytes: 3 blocks of 834 bytes, 2 bytes of padding.
    assert headers[0] == FragmentHeader(7, 123_456_789_000, True, 3, 5, 0, 2500, 834)
    assert [header.index for header in headers] == [0, 1, 2, 3, 4]
    assert b"".join(fragment[HEADER_BYTES:] for fragment in fragments[:3]) == data + bytes(2)


@pytest.mark.parametrize("size", [0, 1, 10])
def test_a_tiny_frame_is_one_data_block(size):
    fragments = fragment_frame(1, 2, frame_bytes(size), False, parity=1)
    assert [FragmentHeader.unpack(fragment).k for fragment in fragments] == [1, 1]
    delivered = feed(FrameAssembler(DEADLINE_NS), fragments[1:])  # parity only
    assert [frame.data for frame in delivered] == [frame_bytes(size)]


def test_frames_too_large_or_payloads_too_small_are_refused():
    room = DEFAULT_PAYLOAD_BYTES - HEADER_BYTES
    fragment_frame(1, 2, bytes(250 * room), True, parity=6)
    with pytest.raises(ValueError, match="parity must be"):
        fragment_frame(1, 2, bytes(250 * room + 1), True, parity=6)
    with pytest.raises(ValueError, match="parity must be"):
        fragment_frame(1, 2, bytes(100), True, parity=-1)
    with pytest.raises(ValueError, match="no room"):
        fragment_frame(1, 2, bytes(100), True, parity=1, payload_bytes=HEADER_BYTES)


@EXAMPLES
@given(number=st.integers(0, 2**32 - 1), stamp=st.integers(0, 2**64 - 1), keyframe=st.booleans(),
       k=st.integers(1, MAX_BLOCKS), extra=st.integers(0, MAX_BLOCKS), block=st.integers(1, 64),
       data=st.data())
def test_header_round_trip(number, stamp, keyframe, k, extra, block, data):
    n = min(k + extra, MAX_BLOCKS)
    header = FragmentHeader(number, stamp, keyframe, k, n, data.draw(st.integers(0, n - 1)),
                            data.draw(st.integers(0, k * block)), block)
    assert FragmentHeader.unpack(header.pack() + bytes(block)) == header


@pytest.mark.parametrize("fragment, reason", [
    (b"", "shorter than its header"),
    (header_bytes()[:-1], "shorter than its header"),
    (header_bytes(), "expected"),  # the block is missing
    (header_bytes() + bytes(4), "expected"),
    (header_bytes() + bytes(6), "expected"),
    (header_bytes(k=0) + bytes(5), "k=0"),
    (header_bytes(k=4, n=3) + bytes(5), "k=4 n=3"),
    (header_bytes(k=2, n=257) + bytes(5), "n=257"),
    (header_bytes(index=3) + bytes(5), "index 3"),
    (header_bytes(length=11) + bytes(5), "does not fit"),
    (header_bytes(length=0, block=0), "does not fit"),
    (header_bytes(flags=0x02) + bytes(5), "flags"),
])
def test_inconsistent_fragments_are_refused(fragment, reason):
    with pytest.raises(ValueError, match=reason):
        FragmentHeader.unpack(fragment)


# Reassembly


@EXAMPLES
@given(size=st.integers(1, 100_000), parity_share=st.floats(0.0, 0.5),
       lost_share=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
@example(size=100_000, parity_share=0.5, lost_share=1.0, seed=1)  # k = 94, 47 of 141 lost
@example(size=60_000, parity_share=0.1, lost_share=1.0, seed=2)
@example(size=1075 * 3 + 1, parity_share=0.5, lost_share=1.0, seed=3)  # 2 padding bytes
def test_any_k_fragments_in_any_order_rebuild_the_exact_frame(size, parity_share, lost_share,
                                                              seed):
    rng = random.Random(seed)
    frame = frame_bytes(size, seed)
    k = data_blocks(size)
    parity = math.ceil(parity_share * k)
    fragments = fragment_frame(3, 99, frame, False, parity=parity)
    lost = set(rng.sample(range(k + parity), round(lost_share * parity)))
    arriving = [index for index in range(k + parity) if index not in lost]
    rng.shuffle(arriving)
    assembler = FrameAssembler(DEADLINE_NS)

    delivered = feed(assembler, [fragments[index] for index in arriving])

    assert len(delivered) == 1
    assert delivered[0].data == frame
    assert (delivered[0].number, delivered[0].stamp_ns, delivered[0].keyframe) == (3, 99, False)
    # The frame completes with the first k fragments in: parity stands in for any data missing.
    assert delivered[0].recovered == (not set(range(k)) <= set(arriving[:k]))
    assert assembler.counters.frames_recovered == delivered[0].recovered
    assert assembler.frames_in_flight == 0


@EXAMPLES
@given(size=st.integers(1, 30_000), parity=st.integers(0, 4), seed=st.integers(0, 2**32))
def test_more_than_parity_lost_is_never_delivered_and_expires(size, parity, seed):
    rng = random.Random(seed)
    fragments = fragment_frame(3, 99, frame_bytes(size), True, parity=parity)
    arriving = rng.sample(fragments, rng.randint(1, len(fragments) - parity - 1)) if (
        len(fragments) - parity > 1) else []
    assembler = FrameAssembler(DEADLINE_NS)

    assert feed(assembler, arriving) == []
    assert assembler.expire(DEADLINE_NS) == 0  # not yet: a deadline is a limit, not a target
    assert assembler.expire(DEADLINE_NS + 1) == (1 if arriving else 0)
    assert assembler.counters.expired == (1 if arriving else 0)
    assert assembler.counters.frames_delivered == 0
    assert assembler.frames_in_flight == 0


def test_a_frame_missing_its_deadline_is_dropped_even_if_it_completes_later():
    fragments = fragment_frame(1, 0, frame_bytes(5000), True, parity=1)
    assembler = FrameAssembler(DEADLINE_NS)
    assert assembler.add(fragments[0], 10 * MS) == []

    assert feed(assembler, fragments[1:], 10 * MS + DEADLINE_NS + 1) == []
    assert assembler.counters.expired == 1
    assert assembler.counters.frames_delivered == 0


def test_expiry_counts_from_the_first_fragment():
    fragments = fragment_frame(1, 0, frame_bytes(5000), True, parity=0)
    assembler = FrameAssembler(DEADLINE_NS)
    assert feed(assembler, fragments[:-1], 0) == []
    # The last fragment at the deadline still completes the frame.
    assert [frame.number for frame in assembler.add(fragments[-1], DEADLINE_NS)] == [1]


@EXAMPLES
@given(order=st.permutations(range(2 * 8)), drop=st.sets(st.integers(0, 2 * 8 - 1), max_size=6))
def test_interleaved_frames_are_delivered_in_order_or_not_at_all(order, drop):
    first = fragment_frame(10, 1, frame_bytes(4000, 1), True, parity=4)  # 4 + 4 fragments
    second = fragment_frame(11, 2, frame_bytes(4000, 2), False, parity=4)
    fragments = first + second
    assembler = FrameAssembler(DEADLINE_NS)

    delivered = feed(assembler, [fragments[index] for index in order if index not in drop])
    assembler.expire(DEADLINE_NS + 1)

    numbers = [frame.number for frame in delivered]
    assert numbers == sorted(set(numbers))
    assert all(frame.data == frame_bytes(4000, frame.number - 9) for frame in delivered)
    counters = assembler.counters
    # Each frame ends exactly one way.
    assert (counters.frames_delivered + counters.incomplete_dropped + counters.late_dropped
            + counters.expired) == 2 - (all(i in drop for i in range(8))
                                        + all(i in drop for i in range(8, 16)))
    assert assembler.frames_in_flight == 0


def test_an_older_frame_arriving_after_a_newer_one_is_dropped_once():
    older = fragment_frame(1, 1, frame_bytes(3000, 1), True, parity=1)
    newer = fragment_frame(2, 2, frame_bytes(3000, 2), False, parity=1)
    assembler = FrameAssembler(DEADLINE_NS)

    assert [frame.number for frame in feed(assembler, newer)] == [2]
    assert feed(assembler, older) == []
    assert assembler.counters.late_dropped == 1
    assert assembler.counters.frames_delivered == 1


def test_a_newer_frame_completing_abandons_the_older_incomplete_one():
    older = fragment_frame(1, 1, frame_bytes(3000, 1), True, parity=0)
    newer = fragment_frame(2, 2, frame_bytes(3000, 2), False, parity=0)
    assembler = FrameAssembler(DEADLINE_NS)

    delivered = feed(assembler, older[:-1] + newer + older[-1:])

    assert [(frame.number, frame.data) for frame in delivered] == [(2, frame_bytes(3000, 2))]
    assert assembler.counters.incomplete_dropped == 1
    assert assembler.counters.late_dropped == 0  # its last fragment is not a new late frame
    assert assembler.frames_in_flight == 0


def test_duplicates_are_counted_and_ignored():
    fragments = fragment_frame(1, 0, frame_bytes(3000), True, parity=1)
    assembler = FrameAssembler(DEADLINE_NS)

    assert feed(assembler, [fragments[0], fragments[0], fragments[3], fragments[0]]) == []
    assert assembler.counters.duplicates == 2
    assert len(feed(assembler, fragments[1:2])) == 1
    # The fragments of a delivered frame are surplus parity, not duplicates.
    assert feed(assembler, fragments) == []
    assert assembler.counters.duplicates == 2


def test_at_most_max_pending_frames_are_held():
    assembler = FrameAssembler(DEADLINE_NS, max_pending=4)
    for number in range(20):
        feed(assembler, fragment_frame(number, 0, frame_bytes(3000), False, parity=0)[:1])
        assert assembler.frames_in_flight == min(number + 1, 4)
    assert assembler.counters.incomplete_dropped == 16
    # The newest four are the ones kept: frame 19 still completes.
    last = fragment_frame(19, 0, frame_bytes(3000), False, parity=0)
    assert [frame.number for frame in feed(assembler, last[1:])] == [19]
    # An incoming frame older than all those held is the one dropped.
    assembler = FrameAssembler(DEADLINE_NS, max_pending=2)
    for number in (5, 6, 4):
        feed(assembler, fragment_frame(number, 0, frame_bytes(3000), False, parity=0)[:1])
    assert assembler.counters.incomplete_dropped == 1
    assert [frame.number for frame in feed(assembler, fragment_frame(
        5, 0, frame_bytes(3000), False, parity=0)[1:])] == [5]


def test_wants_keyframe_from_a_gap_until_a_keyframe():
    assembler = FrameAssembler(DEADLINE_NS)

    def deliver(number, keyframe, keep=None):
        fragments = fragment_frame(number, 0, frame_bytes(3000), keyframe, parity=0)
        return feed(assembler, fragments[:keep], number * MS)

    assert assembler.wants_keyframe  # a decoder cannot start between keyframes
    assert deliver(1, False) and assembler.wants_keyframe
    assert deliver(2, True) and not assembler.wants_keyframe
    assert deliver(3, False) and not assembler.wants_keyframe
    assert not deliver(4, False, keep=1)
    assert not assembler.wants_keyframe  # frame 4 may still complete
    assembler.expire(4 * MS + DEADLINE_NS + 1)
    assert assembler.wants_keyframe
    assert deliver(205, False) and assembler.wants_keyframe
    assert deliver(206, True) and not assembler.wants_keyframe
    assert deliver(208, False) and assembler.wants_keyframe  # 207 lost on every link
    assert deliver(209, True) and not assembler.wants_keyframe
    # 207 coming late is dropped, and the decoder, past keyframe 209, does not need it.
    assert not deliver(207, False) and not assembler.wants_keyframe
    assert assembler.counters.late_dropped == 1
    # A frame held too long, or crowded out, is a gap the moment it is dropped.
    assert not deliver(210, False, keep=1) and not assembler.wants_keyframe
    for number in range(211, 220):
        deliver(number, False, keep=1)
    assert assembler.counters.incomplete_dropped == 2  # 210, then 211, beyond 8 in flight
    assert assembler.wants_keyframe


def test_frame_numbers_wrap():
    assembler = FrameAssembler(DEADLINE_NS)
    numbers = [2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1]
    for number in numbers:
        feed(assembler, fragment_frame(number, 0, frame_bytes(2000), number == numbers[0],
                                       parity=1))
    assert assembler.counters.frames_delivered == 4
    assert not assembler.wants_keyframe
    assert feed(assembler, fragment_frame(2**32 - 3, 0, b"late", True, parity=0)) == []
    assert assembler.counters.late_dropped == 1


def test_a_sender_starting_over_far_behind_is_a_restart():
    assembler = FrameAssembler(DEADLINE_NS, restart_frames=100)
    feed(assembler, fragment_frame(1000, 0, b"old", True, parity=0))

    assert feed(assembler, fragment_frame(900, 0, b"straggler", True, parity=0)) == []
    delivered = feed(assembler, fragment_frame(899, 0, b"new sender", True, parity=0))

    assert [frame.data for frame in delivered] == [b"new sender"]
    assert assembler.counters.restarts == 1
    assert assembler.counters.late_dropped == 1


def test_malformed_fragments_are_counted_not_raised():
    fragments = fragment_frame(1, 0, frame_bytes(3000), True, parity=1)
    disagreeing = bytearray(fragments[1])
    disagreeing[4:12] = (1).to_bytes(8, "big")  # another capture stamp
    assembler = FrameAssembler(DEADLINE_NS)

    bad = [b"", fragments[0][:10], fragments[0][:-1], header_bytes(k=0) + bytes(5),
           header_bytes(k=3, n=2) + bytes(5), header_bytes(index=9) + bytes(5)]
    assert feed(assembler, [fragments[0], *bad, bytes(disagreeing)]) == []
    assert assembler.counters.malformed == len(bad) + 1
    assert len(feed(assembler, fragments[1:3])) == 1


@EXAMPLES
@given(garbage=st.lists(st.binary(max_size=HEADER_BYTES + 40), max_size=30))
def test_garbage_never_raises(garbage):
    assembler = FrameAssembler(DEADLINE_NS)
    for now_ns, fragment in enumerate(garbage):
        assembler.add(fragment, now_ns)
    counters = assembler.counters
    assert counters.malformed + counters.duplicates <= len(garbage)


# Parity


def test_parity_blocks_by_hand():
    # k = 4 data blocks, each fragment lost with p = 0.1: with m parity blocks the frame is
    # lost if more than m of the 4 + m fragments are.
    # m = 2: P(X >= 3), X ~ B(6, 0.1) = 1 - (0.9^6 + 6 0.1 0.9^5 + 15 0.01 0.9^4) = 0.01585
    # m = 3: P(X >= 4), X ~ B(7, 0.1) = 35e-4 0.9^3 + 21e-5 0.9^2 + 7e-6 0.9 + 1e-7 = 0.002728
    assert frame_loss_probability(4, 2, 0.1) == pytest.approx(0.01585, abs=1e-6)
    assert frame_loss_probability(4, 3, 0.1) == pytest.approx(0.002728, abs=1e-7)
    assert parity_blocks(4, 0.1, 0.01) == 3
    assert parity_blocks(4, 0.1, 0.02) == 2
    assert parity_blocks(4, 0.1, 0.5) == 1  # m = 1: 0.0815
    assert parity_blocks(4, 0.1, 0.5, minimum=0) == 0  # m = 0: 1 - 0.9^4 = 0.3439


def test_parity_blocks_limits():
    assert parity_blocks(10, 0.0) == 1  # the minimum
    assert parity_blocks(10, 0.0, minimum=0) == 0
    assert parity_blocks(10, 0.9) == 10  # capped at doubling
    assert parity_blocks(200, 0.9) == MAX_BLOCKS - 200
    assert parity_blocks(MAX_BLOCKS, 0.5) == 0
    for bad in ((0, 0.1), (257, 0.1), (4, -0.1), (4, 1.1)):
        with pytest.raises(ValueError):
            parity_blocks(*bad)
    with pytest.raises(ValueError):
        parity_blocks(4, 0.1, 0.0)


@EXAMPLES
@given(k=st.integers(1, 120), loss=st.floats(0.0, 0.3), target=st.sampled_from([1e-2, 1e-3, 1e-6]))
def test_parity_blocks_is_the_fewest_that_meet_the_target(k, loss, target):
    parity = parity_blocks(k, loss, target, minimum=0)
    # scipy's binomial survival function, P(X > m): independent of the module's sum.
    if parity < min(k, MAX_BLOCKS - k):
        assert binom.sf(parity, k + parity, loss) <= target * (1 + 1e-9)
    if parity > 0:
        assert binom.sf(parity - 1, k + parity - 1, loss) > target * (1 - 1e-9)


@EXAMPLES
@given(k=st.integers(1, 120), losses=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5))
def test_parity_blocks_grow_with_the_loss_rate(k, losses):
    parities = [parity_blocks(k, loss) for loss in sorted(losses)]
    assert parities == sorted(parities)


# Pacing


def test_pacer_rate_over_a_second_is_the_cap():
    rate, burst = 2_500_000, 12_000  # 20 Mbit/s
    pacer = Pacer(rate, burst)
    rng = random.Random(7)
    now_ns, sent_in_second = 0, 0
    while now_ns < 2_000_000_000:
        size = rng.randint(60, 1200)
        now_ns += pacer.wait_ns(size, now_ns)
        assert pacer.ready(size, now_ns)
        pacer.take(size, now_ns)
        if 1_000_000_000 <= now_ns < 2_000_000_000:  # the burst is long spent
            sent_in_second += size
    assert sent_in_second == pytest.approx(rate, rel=0.01)


def test_pacer_burst_then_wait():
    pacer = Pacer(1_000_000, 3000)  # a byte a microsecond
    for _ in range(3):
        assert pacer.ready(1000, 0)
        pacer.take(1000, 0)
    assert not pacer.ready(1000, 0)
    assert pacer.wait_ns(1000, 0) == 1_000_000
    assert pacer.wait_ns(1000, 400_000) == 600_000
    assert pacer.ready(1000, 1_000_000)
    # Idle time refills no further than the burst.
    assert pacer.ready(3000, 10_000_000_000)
    pacer.take(3000, 10_000_000_000)
    assert pacer.wait_ns(1, 10_000_000_000) == 1000


def test_pacer_debt_is_paid_back():
    pacer = Pacer(1_000_000, 2000)
    pacer.take(2000, 0)
    pacer.take(1500, 0)  # had to go anyway
    assert pacer.wait_ns(500, 0) == 2_000_000
    with pytest.raises(ValueError, match="burst"):
        pacer.wait_ns(2001, 0)
