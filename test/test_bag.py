"""Bags without DDS: what BagWriter writes, BagReader and an independent MCAP reader read back
(topics, types, type hashes, offered QoS, values), a writer killed without closing loses at most
its last second, and every unreadable bag is a BagError naming the file."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from geometry_msgs.msg import PoseStamped
from mcap.reader import make_reader
from mcap.records import Chunk
from mcap.stream_reader import StreamReader
from mcap_ros2.decoder import DecoderFactory
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import QosDurability, QosReliability
from std_msgs.msg import Bool, Int64

from telesurg.bags.storage import TYPESTORE, BagError, BagReader, BagWriter, make_qos

POSE = "geometry_msgs/msg/PoseStamped"
BOOL = "std_msgs/msg/Bool"
# rclpy's policy values: history keep_last 1, reliability reliable 1 / best_effort 2,
# durability transient_local 1 / volatile 2.
STREAM = make_qos(1, 1, 2, 2)
STATE = make_qos(1, 1, 1, 1)
START_NS = 1_700_000_000_000_000_000
MS = 1_000_000


def pose(i: int) -> PoseStamped:
    message = PoseStamped()
    message.header.frame_id = f"tip{i}"
    message.header.stamp.sec, message.header.stamp.nanosec = 1000 + i, 7 * i
    message.pose.position.x, message.pose.position.y = 0.001 * i, -0.002 * i
    message.pose.orientation.w = 1.0
    return message


def write_sample_bag(path: Path, storage: str, poses: int = 20) -> dict:
    """A small bag: poses every 10 ms on /tip (offered best effort by one publisher), a Bool
    every 50 ms on /clutch (offered by two publishers: transient local and volatile)."""
    writer = BagWriter(path, storage)
    writer.add_topic("/tip", POSE, [STREAM])
    writer.add_topic("/clutch", BOOL, [STATE, make_qos(1, 1, 1, 2)])
    written = {"/tip": [], "/clutch": []}
    for i in range(poses):
        stamp = START_NS + i * 10 * MS
        writer.write("/tip", stamp, serialize_message(pose(i)))
        written["/tip"].append((stamp, i))
        if i % 5 == 0:
            writer.write("/clutch", stamp + MS, serialize_message(Bool(data=i % 10 == 0)))
            written["/clutch"].append((stamp + MS, i % 10 == 0))
    assert writer.counts == {"/tip": poses, "/clutch": len(written["/clutch"])}
    writer.close()
    return written


def decoded(reader: BagReader) -> dict:
    """Every message of the bag by topic: (receive time, the values the test wrote)."""
    found = reader.read_all()
    return {
        "/tip": [(t, int(deserialize_message(d, PoseStamped).header.frame_id[3:]))
                 for t, d in found.get("/tip", [])],
        "/clutch": [(t, deserialize_message(d, Bool).data) for t, d in found.get("/clutch", [])],
    }


@pytest.mark.parametrize("storage, suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_round_trip_keeps_topics_types_counts_values_qos_and_times(tmp_path, storage, suffix):
    bag = tmp_path / "bag"
    written = write_sample_bag(bag, storage)
    assert sorted(p.name for p in bag.iterdir()) == sorted(["metadata.yaml", f"bag{suffix}"])
    for path in (bag, bag / f"bag{suffix}"):  # the directory, or the storage file alone
        with BagReader(path) as reader:
            assert not reader.unclosed
            assert {t: (b.type, b.count) for t, b in reader.topics.items()} == {
                "/tip": (POSE, 20), "/clutch": (BOOL, 4)}
            assert reader.topics["/tip"].qos == (STREAM,)
            assert reader.topics["/clutch"].qos == (STATE, make_qos(1, 1, 1, 2))
            assert reader.start_ns == START_NS
            assert START_NS + 190 * MS <= reader.end_ns <= START_NS + 190 * MS + 1
            assert decoded(reader) == written
            # All topics together come in time order; from a start time on only.
            stamps = [t for _, t, _ in reader.messages()]
            assert stamps == sorted(stamps) and len(stamps) == 24
            later = [(topic, t) for topic, t, _ in reader.messages(["/clutch"],
                                                                   START_NS + 60 * MS)]
            assert later == [("/clutch", START_NS + 101 * MS), ("/clutch", START_NS + 151 * MS)]
            message = deserialize_message(reader.read_all(["/tip"])["/tip"][3][1], PoseStamped)
            assert message == pose(3)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_metadata_is_rosbag2s_with_the_distributions_type_hashes(tmp_path, storage):
    bag = tmp_path / "bag"
    write_sample_bag(bag, storage)
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9
    assert info["storage_identifier"] == storage
    assert info["message_count"] == 24
    assert info["starting_time"]["nanoseconds_since_epoch"] == START_NS
    assert info["duration"]["nanoseconds"] == 190 * MS
    assert info["relative_file_paths"] == [p.name for p in bag.iterdir() if p.suffix != ".yaml"]
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert {name: t["message_count"] for name, t in topics.items()} == {"/tip": 20, "/clutch": 4}
    for name, type_name in (("/tip", POSE), ("/clutch", BOOL)):
        meta = topics[name]["topic_metadata"]
        assert meta["type"] == type_name
        assert meta["serialization_format"] == "cdr"
        assert meta["type_description_hash"].startswith("RIHS01_")
        assert meta["type_description_hash"] == TYPESTORE.hash_rihs01(type_name)
        # ... and the hash the installed message package was generated with.
        assert meta["type_description_hash"] == installed_type_hash(type_name)
    tip_qos = topics["/tip"]["topic_metadata"]["offered_qos_profiles"]
    assert [(q["history"], q["depth"], q["reliability"], q["durability"]) for q in tip_qos] == [
        ("keep_last", 1, "best_effort", "volatile")]
    clutch_qos = topics["/clutch"]["topic_metadata"]["offered_qos_profiles"]
    assert [(q["reliability"], q["durability"]) for q in clutch_qos] == [
        ("reliable", "transient_local"), ("reliable", "volatile")]


def installed_type_hash(type_name: str) -> str:
    """The RIHS01 hash in the type description the message package installed."""
    package, _, name = type_name.split("/")
    description = Path(sys.prefix) / "share" / package / "msg" / f"{name}.json"
    hashes = json.loads(description.read_text())["type_hashes"]
    return next(h["hash_string"] for h in hashes if h["type_name"] == type_name)


def test_an_independent_mcap_reader_decodes_the_bag(tmp_path):
    bag = tmp_path / "bag"
    written = write_sample_bag(bag, "mcap")
    found: dict[str, list] = {}
    with open(bag / "bag.mcap", "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        assert {summary.channels[c].topic: n
                for c, n in summary.statistics.channel_message_counts.items()} == {
            "/tip": 20, "/clutch": 4}
        for schema, channel, message, ros in reader.iter_decoded_messages():
            assert channel.message_encoding == "cdr"
            found.setdefault(channel.topic, []).append((schema.name, message.log_time, ros))
    assert {topic: {name for name, _, _ in m} for topic, m in found.items()} == {
        "/tip": {POSE}, "/clutch": {BOOL}}
    assert [(t, int(m.header.frame_id[3:])) for _, t, m in found["/tip"]] == written["/tip"]
    assert [(t, m.data) for _, t, m in found["/clutch"]] == written["/clutch"]
    tip = found["/tip"][7][2]
    assert (tip.pose.position.x, tip.pose.position.y) == (0.007, -0.014)
    assert (tip.header.stamp.sec, tip.header.stamp.nanosec) == (1007, 49)


CRASHING_WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Int64
    from telesurg.bags.storage import BagWriter, make_qos

    bag, storage, seconds, log = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    writer = BagWriter(bag, storage)
    for topic in ("/count", "/other"):
        writer.add_topic(topic, "std_msgs/msg/Int64", [make_qos(1, 1, 1, 2)])
    with open(log, "w", buffering=1) as written:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            stamp = time.time_ns()
            # Two topics written out of time order, as a recorder taking one topic's queue
            # after another's does.
            writer.write("/count", stamp, serialize_message(Int64(data=i)))
            writer.write("/other", stamp - 500_000, serialize_message(Int64(data=-i)))
            writer.checkpoint_if_due()
            written.write(f"{i} {stamp}\\n")
            time.sleep(0.001)
    os._exit(3)  # killed: no close
""")


@pytest.mark.multiprocess
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_writer_that_dies_without_closing_loses_at_most_its_last_second(tmp_path, storage):
    script = tmp_path / "writer.py"
    script.write_text(CRASHING_WRITER)
    bag, log = tmp_path / "bag", tmp_path / "written.log"
    result = subprocess.run([sys.executable, str(script), str(bag), storage, "2.5", str(log)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    written = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert len(written) > 1000  # about 1 kHz for 2.5 s, or the test proves nothing
    with BagReader(bag) as reader:
        assert reader.unclosed == (storage == "mcap")  # sqlite3 has its last commit
        found = reader.read_all()
        # metadata.yaml (from the last checkpoint) claims nothing that is not there.
        assert reader.topics["/count"].count <= len(found["/count"])
    values = [deserialize_message(d, Int64).data for _, d in found["/count"]]
    others = [deserialize_message(d, Int64).data for _, d in found["/other"]]
    # A prefix of what was written, intact, with its times; the other topic alongside.
    assert values == list(range(1, len(values) + 1))
    assert [t for t, _ in found["/count"]] == [stamp for _, stamp in written[:len(values)]]
    assert others[:len(values) - 1] == [-v for v in values[:-1]]
    # Everything written more than a second (and a margin for this busy machine) before the
    # end is there; the loss is the last second or less.
    last_stamp = written[-1][1]
    assert values[-1] >= max(i for i, stamp in written if stamp <= last_stamp - 1_200 * MS)
    lost_s = (last_stamp - found["/count"][-1][0]) * 1e-9
    assert lost_s <= 1.2, lost_s
    # All topics together in time order, though they were not written so.
    with BagReader(bag) as reader:
        stamps = [t for _, t, _ in reader.messages()]
    assert stamps == sorted(stamps)


def write_counts(path: Path, close: bool) -> Path:
    """A bag of /count 1..400, a checkpoint every 50 (a chunk on disk, as every second of a
    recording); closed, or left as a recorder that died leaves it."""
    writer = BagWriter(path, "mcap")
    writer.add_topic("/count", "std_msgs/msg/Int64", [STATE])
    for i in range(1, 401):
        writer.write("/count", START_NS + i * MS, serialize_message(Int64(data=i)))
        if i % 50 == 0:
            writer.checkpoint()
    if close:
        writer.close()
    return path / f"{path.name}.mcap"


def test_a_closed_bag_cut_short_is_an_error_naming_the_file(tmp_path):
    mcap = write_counts(tmp_path / "source", close=True)
    size = mcap.stat().st_size
    for fraction in (0.02, 0.3, 0.5, 0.8, 0.99):
        bag = tmp_path / f"cut{fraction}"
        shutil.copytree(mcap.parent, bag)
        os.truncate(bag / mcap.name, int(size * fraction))
        for path in (bag, bag / mcap.name):  # with its metadata.yaml, or alone
            with pytest.raises(BagError, match=f"{path}: truncated"):
                BagReader(path)


def test_a_recording_in_progress_cut_anywhere_reads_up_to_its_last_whole_chunk(tmp_path):
    mcap = write_counts(tmp_path / "source", close=False)
    size = mcap.stat().st_size
    read = {}
    for fraction in (0.02, 0.3, 0.5, 0.8, 1.0):
        bag = tmp_path / f"cut{fraction}"
        shutil.copytree(mcap.parent, bag)
        os.truncate(bag / mcap.name, int(size * fraction))
        with BagReader(bag) as reader:
            assert reader.unclosed
            found = reader.read_all(["/count"])["/count"]
        values = [deserialize_message(d, Int64).data for _, d in found]
        assert values == list(range(1, len(values) + 1))  # a prefix, intact
        assert [t for t, _ in found] == [START_NS + v * MS for v in values]
        read[fraction] = len(values)
    assert read[0.02] == 0  # cut inside the first chunk: only the file header is left
    assert read[1.0] == 400  # every checkpoint on disk
    assert 0 < read[0.5] < 400
    assert list(read.values()) == sorted(read.values())
    assert all(n % 50 == 0 for n in read.values())  # whole chunks (checkpoints) only
    # Cut to nothing, or inside the file header, it is not a bag.
    for length in (0, 5, 20):
        os.truncate(tmp_path / "cut0.02" / mcap.name, length)
        with pytest.raises(BagError, match="cut0.02"):
            BagReader(tmp_path / "cut0.02")


def write_garbage(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", ["missing", "empty_dir", "garbage_mcap", "garbage_db3",
                                  "empty_mcap", "garbage_metadata", "binary_metadata",
                                  "metadata_without_storage", "garbage_db3_in_bag",
                                  "half_db3", "not_a_bag_file"])
def test_unreadable_bags_are_a_bag_error_naming_the_file(tmp_path, case):
    bag = tmp_path / "bag"
    if case == "missing":
        path = tmp_path / "nothing_here"
    elif case == "empty_dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "garbage_mcap":
        path = write_garbage(tmp_path / "x.mcap", os.urandom(2000))
    elif case == "garbage_db3":
        path = write_garbage(tmp_path / "x.db3", b"SQLite format 3\x00" + os.urandom(4000))
    elif case == "empty_mcap":
        path = write_garbage(tmp_path / "x.mcap", b"")
    else:
        storage = "sqlite3" if "db3" in case else "mcap"
        write_sample_bag(bag, storage)
        path = bag
        if case == "garbage_metadata":
            (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2\n")
        elif case == "binary_metadata":
            (bag / "metadata.yaml").write_bytes(os.urandom(300))
        elif case == "metadata_without_storage":
            (bag / "bag.mcap").unlink()
        elif case == "garbage_db3_in_bag":
            write_garbage(bag / "bag.db3", os.urandom(5000))
        elif case == "half_db3":
            os.truncate(bag / "bag.db3", (bag / "bag.db3").stat().st_size // 2)
        elif case == "not_a_bag_file":
            path = bag / "metadata.yaml"
    with pytest.raises(BagError) as error:
        with BagReader(path) as reader:
            reader.read_all()
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


def test_require_names_every_missing_topic_and_wrong_type(tmp_path):
    write_sample_bag(tmp_path / "bag", "mcap")
    with BagReader(tmp_path / "bag") as reader:
        reader.require({"/tip": POSE, "/clutch": BOOL})  # all there: no error
        reader.require({})
        with pytest.raises(BagError) as error:
            reader.require({"/tip": POSE, "/clutch": "std_msgs/msg/String", "/gone": BOOL,
                            "/also_gone": POSE})
    message = str(error.value)
    assert message.startswith(str(tmp_path / "bag"))
    assert "/gone missing" in message and "/also_gone missing" in message
    assert f"/clutch is {BOOL}, expected std_msgs/msg/String" in message
    assert "/tip" not in message


def test_the_writer_refuses_an_existing_path_and_an_unknown_storage(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(BagError, match="exists"):
        BagWriter(tmp_path / "taken")
    with pytest.raises(BagError, match="unknown storage 'rosbag1'"):
        BagWriter(tmp_path / "new", "rosbag1")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(BagError) as error:  # not an OSError from the depths of rosbags
        BagWriter(tmp_path / "file" / "bag", "sqlite3")
    assert str(error.value) == (f"{tmp_path / 'file' / 'bag'}: cannot create the bag: "
                                "Not a directory")


def test_a_bag_being_written_is_readable_at_its_last_checkpoint(tmp_path):
    """What a crash leaves, and what a live check of a recording sees."""
    writer = BagWriter(tmp_path / "live", "mcap")
    writer.add_topic("/count", "std_msgs/msg/Int64", [STATE])
    for i in range(1, 11):
        writer.write("/count", START_NS + i * MS, serialize_message(Int64(data=i)))
    writer.checkpoint()
    writer.write("/count", START_NS + 11 * MS, serialize_message(Int64(data=11)))  # not yet
    try:
        with BagReader(tmp_path / "live") as reader:
            assert reader.unclosed
            assert reader.topics["/count"].count == 10
            assert reader.topics["/count"].qos[0].reliability == QosReliability.RELIABLE
            assert reader.topics["/count"].qos[0].durability == QosDurability.TRANSIENT_LOCAL
            values = [deserialize_message(d, Int64).data
                      for _, d in reader.read_all()["/count"]]
        assert values == list(range(1, 11))
    finally:
        writer.close()
    with BagReader(tmp_path / "live") as reader:
        assert not reader.unclosed
        assert reader.topics["/count"].count == 11


# -- damage --------------------------------------------------------------------------------


def chunked_bag(path: Path, checksums: bool = True, poses: int = 4000) -> int:
    """poses on /tip, a chunk closed every 400 (as the recorder's checkpoints do each second),
    written by BagWriter, or by rosbags alone (chunks without checksums, as other tools may
    write them); returns how many messages it holds."""
    if checksums:
        writer = BagWriter(path, "mcap")
        writer.add_topic("/tip", POSE, [STREAM])
        write = writer.write
        close_chunk = writer.checkpoint
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        tip = writer.add_connection("/tip", POSE, typestore=TYPESTORE)

        def write(_topic, stamp, data):
            writer.write(tip, stamp, data)
        close_chunk = writer.storage.close_chunk
    for i in range(poses):
        write("/tip", START_NS + i * 10 * MS, serialize_message(pose(i)))
        if i % 400 == 399:
            close_chunk()
    writer.close()
    return poses


def damaged_bag(tmp_path: Path, checksums: bool = True) -> tuple[Path, int]:
    """A chunked bag with 4 KiB overwritten a third into its MCAP file; returns it and how many
    messages it holds."""
    bag = tmp_path / "damaged"
    total = chunked_bag(bag, checksums)
    mcap = bag / "damaged.mcap"
    data = bytearray(mcap.read_bytes())
    third = len(data) // 3
    data[third:third + 4096] = bytes(range(256)) * 16
    mcap.write_bytes(bytes(data))
    return bag, total


def test_the_recorder_writes_chunk_checksums_an_independent_reader_verifies(tmp_path):
    bag = tmp_path / "bag"
    chunked_bag(bag)
    with open(bag / "bag.mcap", "rb") as file:
        chunks = [record for record in StreamReader(file, emit_chunks=True).records
                  if isinstance(record, Chunk)]
    assert len(chunks) == 10 and all(chunk.uncompressed_crc for chunk in chunks)
    with open(bag / "bag.mcap", "rb") as file:  # checked as each chunk is opened
        records = list(StreamReader(file, validate_crcs=True).records)
    assert sum(1 for record in records if type(record).__name__ == "Message") == 4000


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no checksums"])
def test_a_damaged_bag_is_refused_naming_where_or_read_without_the_damage(tmp_path, checksums):
    """4 KiB overwritten: once silently read with a thousand messages missing. Now an error
    naming the file and the damaged bytes, or, when asked to, the rest of the bag with what
    was lost said."""
    bag, total = damaged_bag(tmp_path, checksums)
    with pytest.raises(BagError) as error:
        BagReader(bag)
    message = str(error.value)
    assert message.startswith(f"{bag}: damaged: 1 chunk damaged, the first at bytes ")
    assert "--accept-damage reads the rest" in message and "/tip" in message
    with BagReader(bag, accept_damage=True) as reader:
        read = sum(len(messages) for messages in reader.read_all().values())
        note = reader.damage_note
    lost = total - read
    assert 0 < lost < total // 2
    assert f"read without them: lost {lost} messages" in note


@pytest.mark.multiprocess  # runs `telesurg` commands
def test_the_command_line_refuses_a_damaged_bag_and_reads_it_when_told(tmp_path):
    bag, _ = damaged_bag(tmp_path)
    for command in (["replay", str(bag), "--rate", "100"],
                    ["report", str(bag), "--out", str(tmp_path / "report")]):
        result = subprocess.run([sys.executable, "-m", "telesurg.cli", *command],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().startswith(f"telesurg {command[0]}: {bag}: damaged: ")
        assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "telesurg.cli", "report", str(bag),
                             "--out", str(tmp_path / "report"), "--accept-damage"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "read without them: lost" in result.stderr
    assert "read without them: lost" in (tmp_path / "report" / "report.html").read_text()
