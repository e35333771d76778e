"""Wire format: authenticated round trips, rejection of anything altered, PRP de-duplication."""

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telesurg.bridge.wire import (
    MAX_DATAGRAM_BYTES,
    AntiReplayWindow,
    AuthenticationFailed,
    BadVersion,
    Datagram,
    DatagramTooLarge,
    DropCounters,
    KeyFileError,
    MessageKind,
    ReflectedDatagram,
    SequenceReuse,
    TruncatedDatagram,
    WireCodec,
    WireError,
    load_key,
    max_message_bytes,
    max_payload_bytes,
    pack_data,
    unpack_data,
    write_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CIPHERTEXT_START = 29  # after the header


def codecs(key=KEY):
    """(sender, receiver) sharing `key`, as the two bridges do."""
    return WireCodec(key), WireCodec(key)


@pytest.mark.parametrize("kind", list(MessageKind))
def test_round_trip_of_every_kind(kind):
    sender, receiver = codecs()
    topic_index = 7 if kind == MessageKind.DATA else 0
    payload = b"\x00\x01cdr bytes" if kind == MessageKind.DATA else b""
    datagram = sender.encode(kind, 1, 2**64 - 1, 123_456_789, topic_index, payload)

    decoded = receiver.decode(datagram)

    assert decoded == Datagram(kind, 1, sender.sender_id, 2**64 - 1, 123_456_789, topic_index,
                               payload)
    assert decoded.kind is kind


def test_payload_is_encrypted():
    sender, _ = codecs()
    payload = b"joint positions of the patient arm"
    assert payload not in sender.encode(MessageKind.DATA, 0, 1, 0, 3, payload)


def test_the_two_copies_of_a_sequence_differ_by_link_and_both_decode():
    sender, receiver = codecs()
    on_fiber = sender.encode(MessageKind.DATA, 0, 5, 0, 1, b"command")
    on_cellular = sender.encode(MessageKind.DATA, 1, 5, 0, 1, b"command")

    assert on_fiber[CIPHERTEXT_START:] != on_cellular[CIPHERTEXT_START:]  # different nonces
    assert [receiver.decode(copy).link_id for copy in (on_fiber, on_cellular)] == [0, 1]


def test_every_flipped_bit_is_rejected_and_counted():
    sender, receiver = codecs()
    datagram = sender.encode(MessageKind.DATA, 1, 42, 1_000, 3, b"8 bytes!")
    drops = DropCounters()

    for bit in range(len(datagram) * 8):
        altered = bytearray(datagram)
        altered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireError) as rejection:
            receiver.decode(bytes(altered))
        drops.record(rejection.value.reason)

    assert drops.total == len(datagram) * 8
    assert set(drops.snapshot()) <= {"bad version", "unknown kind", "authentication failed"}
    assert receiver.decode(datagram).payload == b"8 bytes!"  # the original still decodes


def test_truncation_at_every_length_is_rejected():
    sender, receiver = codecs()
    datagram = sender.encode(MessageKind.HEARTBEAT, 0, 1, 0, 0, b"ping")
    for length in range(len(datagram)):
        with pytest.raises((TruncatedDatagram, AuthenticationFailed)):
            receiver.decode(datagram[:length])


def test_wrong_key_is_rejected():
    datagram = WireCodec(KEY).encode(MessageKind.DATA, 0, 1, 0, 1, b"payload")
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        WireCodec(OTHER_KEY).decode(datagram)


def test_other_protocol_version_is_rejected():
    sender, receiver = codecs()
    datagram = bytearray(sender.encode(MessageKind.DATA, 0, 1, 0, 1, b"payload"))
    datagram[0] = 0
    with pytest.raises(BadVersion, match="bad version"):
        receiver.decode(bytes(datagram))


def test_own_datagram_sent_back_is_rejected():
    codec = WireCodec(KEY)
    with pytest.raises(ReflectedDatagram):
        codec.decode(codec.encode(MessageKind.HEARTBEAT, 0, 1, 0, 0, b""))


def test_a_nonce_is_never_reused():
    sender, _ = codecs()
    sender.encode(MessageKind.DATA, 0, 10, 0, 1, b"a")
    sender.encode(MessageKind.DATA, 1, 10, 0, 1, b"a")  # same sequence, other link: fine
    for sequence in (10, 9):
        with pytest.raises(SequenceReuse):
            sender.encode(MessageKind.DATA, 0, sequence, 0, 1, b"a")


def test_replayed_datagram_is_rejected_by_the_window():
    sender, receiver = codecs()
    window = AntiReplayWindow()
    datagram = sender.encode(MessageKind.DATA, 0, 1, 0, 1, b"move")

    assert window.accept(receiver.decode(datagram).sequence)
    assert not window.accept(receiver.decode(datagram).sequence)
    assert window.duplicates == 1


def test_window_drops_sequences_older_than_its_width():
    window = AntiReplayWindow(width=16)
    assert window.accept(100)
    assert window.accept(85)  # 100 - 15: the oldest still in the window
    assert not window.accept(84)
    assert window.accept(2**64 - 1)  # a huge jump clears the window without a huge integer
    assert not window.accept(100)
    assert (window.too_old, window.duplicates) == (2, 0)


@st.composite
def two_link_arrivals(draw, width):
    """Sequences 0..n-1 sent on two links, each copy lost or delayed by less than `width`."""
    copy_delay = st.none() | st.integers(0, width - 1)  # None: this copy is lost
    count = draw(st.integers(1, 100))
    delays = draw(st.lists(st.tuples(copy_delay, copy_delay), min_size=count, max_size=count))
    arrivals = sorted((sequence + delay, link, sequence)
                      for sequence, delays_by_link in enumerate(delays)
                      for link, delay in enumerate(delays_by_link) if delay is not None)
    return [sequence for _, _, sequence in arrivals]


@settings(max_examples=100, deadline=None)
@given(arrivals=two_link_arrivals(width=16))
def test_window_passes_every_sequence_exactly_once(arrivals):
    window = AntiReplayWindow(width=16)
    passed = [sequence for sequence in arrivals if window.accept(sequence)]

    assert sorted(passed) == sorted(set(arrivals))
    assert window.duplicates == len(arrivals) - len(passed)
    assert window.too_old == 0


@settings(max_examples=200, deadline=None)
@given(arrivals=st.lists(st.integers(0, 100), max_size=300))
def test_window_matches_a_model_with_unbounded_memory(arrivals):
    window = AntiReplayWindow(width=16)
    seen, highest, too_old, duplicates = set(), None, 0, 0
    for sequence in arrivals:
        if highest is not None and sequence <= highest - 16:
            expected, too_old = False, too_old + 1
        elif sequence in seen:
            expected, duplicates = False, duplicates + 1
        else:
            expected, highest = True, max(sequence, -1 if highest is None else highest)
            seen.add(sequence)
        assert window.accept(sequence) == expected
    assert (window.too_old, window.duplicates) == (too_old, duplicates)


def test_oversized_payload_is_refused_and_the_largest_fits():
    sender, receiver = codecs()
    largest = bytes(max_payload_bytes())
    datagram = sender.encode(MessageKind.DATA, 0, 1, 0, 1, largest)

    assert len(datagram) <= MAX_DATAGRAM_BYTES
    assert receiver.decode(datagram).payload == largest
    with pytest.raises(DatagramTooLarge, match=f"{max_payload_bytes() + 1} bytes exceeds"):
        sender.encode(MessageKind.DATA, 0, 2, 0, 1, largest + b"x")


def test_key_file_round_trip_with_mode_0600(tmp_path):
    path = tmp_path / "link.key"
    key = write_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    assert len(key) == 32
    assert os.listdir(tmp_path) == ["link.key"]  # no temporary file left behind


def test_world_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "link.key"
    write_key(path, KEY)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"link\.key has mode 0644"):
        load_key(path)


@pytest.mark.parametrize("content", [b"", b"00" * 31 + b"\n", b"zz" * 32 + b"\n",
                                     b"00" * 32 + b"\n00\n", b"00 " * 32])
def test_malformed_key_file_is_refused(tmp_path, content):
    path = tmp_path / "link.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="must hold one line of 64 hex digits"):
        load_key(path)


def test_data_payload_carries_the_previous_message_when_it_fits():
    message, previous = b"current" * 10, (41, 3, b"previous" * 10)
    assert unpack_data(pack_data(message, previous)) == (message, previous)
    assert unpack_data(pack_data(message, None)) == (message, None)
    assert unpack_data(pack_data(b"", (1, 0, b""))) == (b"", (1, 0, b""))
    # Both at their largest do not fit one datagram: the previous one is left out.
    largest = bytes(max_message_bytes())
    assert unpack_data(pack_data(largest, (7, 1, largest))) == (largest, None)
    assert len(pack_data(largest, None)) == max_payload_bytes()


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x05abc", b"\x00\x01a" + b"\x00" * 9])
def test_malformed_data_payloads_are_refused(payload):
    with pytest.raises(WireError) as error:
        unpack_data(payload)
    assert error.value.reason == "malformed data"


def test_drop_counters_give_the_rate_of_rejections_over_the_last_second():
    drops = DropCounters()
    assert drops.per_second(0.0) == 0.0
    for step in range(1, 31):  # 300 rejections a second, sampled at 10 Hz for 3 s
        for _ in range(30):
            drops.record("bad version")
        rate = drops.per_second(step * 0.1)
    assert rate == pytest.approx(300.0)
    assert rate >= DropCounters.FLOOD_PER_S
    for step in range(31, 52):  # then none for two seconds
        rate = drops.per_second(step * 0.1)
    assert rate == 0.0
