"""Bridge configuration: the default file serves both roles with the same topic indices, and bad
files are refused with the file and the key named."""

import copy
import functools
import socket
from pathlib import Path

import pytest
import yaml
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState

from telesurg.bridge import config as bridge_config
from telesurg.bridge.config import ROLES, default_bridge_config_path
from telesurg.bridge.core import open_link_socket
from telesurg.bridge.wire import max_message_bytes
from telesurg.contract.params import ConfigError
from telesurg.contract.topics import Qos
from telesurg.ros.messages import (
    SEQUENCE_ELEMENTS,
    STRING_CHARS,
    STRING_IN_SEQUENCE_CHARS,
    message_class,
    message_info,
    worst_case_cdr_bytes,
)

load_bridge_config = functools.partial(bridge_config.load_bridge_config,
                                       message_types=message_info)

DEFAULT = yaml.safe_load(default_bridge_config_path().read_text())


def write(tmp_path, document, name="bridge.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def edited(edit):
    """A copy of the default document changed by `edit`."""
    document = copy.deepcopy(DEFAULT)
    edit(document)
    return document


def test_default_file_loads_for_both_roles_with_the_same_topic_indices():
    master, patient = (load_bridge_config(default_bridge_config_path(), role) for role in ROLES)
    assert master.outgoing == patient.incoming and master.incoming == patient.outgoing
    assert [topic.index for topic in master.outgoing + master.incoming] == list(range(13))
    assert [topic.name for topic in master.outgoing] == [
        "/psm/servo_cp", "/psm/jaw/servo_jp", "/psm/state_command", "/console/following",
        "/console/operator_present", "/endoscope/keyframe_request"]
    assert [topic.name for topic in master.incoming] == [
        "/psm/measured_cp", "/psm/operating_state", "/safety/status",
        "/endoscope/left/image_raw/compressed", "/endoscope/right/image_raw/compressed",
        "/endoscope/left/camera_info", "/endoscope/right/camera_info"]
    assert [topic.qos for topic in master.outgoing + master.incoming] == [
        Qos.COMMAND, Qos.COMMAND, Qos.EVENT, Qos.STATE, Qos.STATE, Qos.EVENT,
        Qos.STATE, Qos.STATE, Qos.STATE, Qos.VIDEO, Qos.VIDEO, Qos.COMMAND, Qos.COMMAND]
    assert [link.name for link in master.links] == [link.name for link in patient.links]
    for mine, theirs in zip(master.links, patient.links, strict=True):
        assert mine.peer == theirs.bind and theirs.peer == mine.bind
    assert (master.heartbeat_rate_hz, master.link_timeout_ms) == (100.0, 50.0)


def test_without_video_the_video_topics_are_left_out_and_indices_kept():
    with_video, without = (load_bridge_config(default_bridge_config_path(), "master",
                                              video=video) for video in (True, False))
    assert without.outgoing == with_video.outgoing[:5]
    assert with_video.outgoing[5].name == "/endoscope/keyframe_request"
    assert [topic.name for topic in without.incoming] == [
        "/psm/measured_cp", "/psm/operating_state", "/safety/status"]
    assert without.incoming == with_video.incoming[:3]


def test_optional_keys_take_their_defaults_and_addresses_their_forms(tmp_path):
    def edit(document):
        del document["heartbeat_rate_hz"], document["link_timeout_ms"]
        document["links"][0]["master"] = {"bind": "[::1]:17601", "peer": "patient.example:17611",
                                          "interface": "enp3s0"}
    config = load_bridge_config(write(tmp_path, edited(edit)), "master")
    assert (config.heartbeat_rate_hz, config.link_timeout_ms) == (100.0, 50.0)
    assert config.links[0] == bridge_config.LinkConfig(
        "a", ("::1", 17601), ("patient.example", 17611), "enp3s0")


def test_key_file_is_resolved_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    cases = {"keys/bridge.key": folder / "keys" / "bridge.key",
             "/etc/telesurg/bridge.key": "/etc/telesurg/bridge.key",
             "~/bridge.key": tmp_path / "home" / "bridge.key"}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for written, expected in cases.items():
        path = write(folder, edited(lambda document, key=written: document.update(key_file=key)))
        assert str(load_bridge_config(path.relative_to(tmp_path), "patient").key_file) == str(
            expected)


def link_side(document, **side):
    document["links"][0]["master"].update(side)


def first_topic(document, **topic):
    document["topics"]["master_to_patient"][0].update(topic)


@pytest.mark.parametrize("edit, key, expected", [
    (lambda d: d.update(colour="red"), "colour", "unknown key"),
    (lambda d: link_side(d, bnid="127.0.0.1:1"), "links[0].master.bnid", "unknown key"),
    (lambda d: d["links"][1].update(wan=True), "links[1].wan", "unknown key"),
    (lambda d: first_topic(d, rate=5), "topics.master_to_patient[0].rate", "unknown key"),
    (lambda d: d["topics"].update(both_ways=[]), "topics.both_ways", "unknown key"),
    (lambda d: d.pop("key_file"), "key_file", "missing"),
    (lambda d: d["links"][0].pop("patient"), "links[0].patient", "missing"),
    (lambda d: d.update(links={"a": {}}), "links", "must be a list"),
    (lambda d: d.update(links=[]), "links", "at least one link"),
    (lambda d: d.update(topics=[]), "topics", "must be a mapping"),
    (lambda d: d.update(key_file=7), "key_file", "must be a non-empty string"),
    (lambda d: d.update(heartbeat_rate_hz="fast"), "'heartbeat_rate_hz'", "must be float"),
    (lambda d: d.update(heartbeat_rate_hz=0.5), "'heartbeat_rate_hz'", "out of range"),
    (lambda d: d.update(link_timeout_ms=20), "link_timeout_ms", "3 heartbeat periods"),
    (lambda d: d["links"][0].update(name=5), "links[0].name", "non-empty string"),
    (lambda d: d["links"][0].update(name="fiber link"), "links[0].name", "letters, digits"),
    (lambda d: link_side(d, bind="127.0.0.1"), "links[0].master.bind", "not HOST:PORT"),
    (lambda d: link_side(d, bind="::1:17601"), "links[0].master.bind", "not HOST:PORT"),
    (lambda d: link_side(d, peer="127.0.0.1:0"), "links[0].master.peer", "not in [1, 65535]"),
    (lambda d: link_side(d, peer="127.0.0.1:70000"), "links[0].master.peer", "not in [1, 65535]"),
    (lambda d: link_side(d, peer="127.0.0.300:1"), "links[0].master.peer", "not a valid host"),
    (lambda d: link_side(d, peer="bad_host:1"), "links[0].master.peer", "not a valid host"),
    (lambda d: link_side(d, peer="[127.0.0.1]:1"), "links[0].master.peer", "not a valid host"),
    (lambda d: link_side(d, peer="0.0.0.0:17611"), "links[0].master.peer", "any address"),
    (lambda d: link_side(d, interface="eth0/1"), "links[0].master.interface", "interface name"),
    (lambda d: d["links"][1].update(name="a"), "links[1].name", "already used by links[0].name"),
    (lambda d: d["links"][1]["patient"].update(bind="127.0.0.1:17611"),
     "links[1].patient.bind", "already used by links[0].patient.bind"),
    (lambda d: d["topics"]["master_to_patient"].append(d["topics"]["master_to_patient"][0]),
     "topics.master_to_patient[6].name", "listed twice (also topics.master_to_patient[0])"),
    (lambda d: d["topics"]["patient_to_master"].append(d["topics"]["master_to_patient"][1]),
     "topics.patient_to_master[7].name", "also in topics.master_to_patient[1]: a topic crossing"),
    (lambda d: first_topic(d, name="psm/servo_cp"), "topics.master_to_patient[0].name",
     "must be absolute"),
    (lambda d: first_topic(d, name="/bridge/link_state"), "topics.master_to_patient[0].name",
     "published by each site itself"),
    (lambda d: d["topics"]["patient_to_master"][0].update(name="/diagnostics"),
     "topics.patient_to_master[0].name", "published by each site itself"),
    (lambda d: first_topic(d, type="geometry_msgs/msg/Posed"), "topics.master_to_patient[0].type",
     "geometry_msgs.msg has no message Posed"),
    (lambda d: first_topic(d, type="nope_msgs/msg/Pose"), "topics.master_to_patient[0].type",
     "cannot import nope_msgs.msg"),
    (lambda d: first_topic(d, type="geometry_msgs/PoseStamped"),
     "topics.master_to_patient[0].type", "write package/msg/Name"),
    (lambda d: first_topic(d, qos="fast"), "topics.master_to_patient[0].qos",
     "must be one of command, state, event"),
    (lambda d: d["links"].extend({"name": f"l{n}", **d["links"][0]} for n in range(253)),
     "links", "255 links: at most 254"),
])
def test_bad_files_are_refused_naming_file_and_key(tmp_path, edit, key, expected):
    path = write(tmp_path, edited(edit))
    with pytest.raises(ConfigError) as error:
        load_bridge_config(path, "master")
    assert f"{path}: {key}" in str(error.value)
    assert expected in str(error.value)


def test_unknown_role_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="bridge.yaml: unknown role 'surgeon'"):
        load_bridge_config(default_bridge_config_path(), "surgeon")
    (tmp_path / "broken.yaml").write_text("links: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_bridge_config(tmp_path / "broken.yaml", "master")
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_bridge_config(tmp_path / "missing.yaml", "master")


def test_topic_count_is_limited_to_the_wire_index(tmp_path, monkeypatch):
    # The default file has 13 topics; 65536 would take YAML seconds to parse.
    monkeypatch.setattr(bridge_config, "MAX_TOPICS", 12)
    with pytest.raises(ConfigError, match=r"bridge.yaml: topics: 13 topics: at most 12"):
        load_bridge_config(default_bridge_config_path(), "master")


@pytest.mark.parametrize("type_name, size", [
    ("sensor_msgs/msg/Image", 4268), ("sensor_msgs/msg/PointCloud2", 5041)])
def test_types_that_do_not_fit_a_datagram_are_refused_with_their_size(tmp_path, type_name, size):
    path = write(tmp_path, edited(lambda d: first_topic(d, type=type_name)))
    with pytest.raises(ConfigError) as error:
        load_bridge_config(path, "patient")
    assert f"{path}: topics.master_to_patient[0].type: {type_name} can take {size} bytes" in str(
        error.value)
    assert f"more than the {max_message_bytes()} a datagram carries" in str(error.value)


def test_worst_case_joint_state_is_the_documented_one_and_fits():
    joints = SEQUENCE_ELEMENTS
    worst = JointState(name=["j" * STRING_IN_SEQUENCE_CHARS] * joints, position=[0.0] * joints,
                       velocity=[0.0] * joints, effort=[0.0] * joints)
    worst.header.frame_id = "f" * STRING_CHARS
    size = worst_case_cdr_bytes(JointState)
    assert size == len(serialize_message(worst)) == 1132
    assert size <= max_message_bytes()
    assert worst_case_cdr_bytes(message_class("geometry_msgs/msg/PoseStamped")) == 140


def test_parameters_override_this_sites_links_and_key(tmp_path):
    path = bridge_config.default_bridge_config_path()
    config = load_bridge_config(path, "patient", str(tmp_path / "site.key"), {
        "link_binds": "a=10.1.0.2:17611 b=",  # an empty value keeps the file's
        "link_peers": "a=10.1.0.1:17601 b=[fd00::1]:17602",
        "link_interfaces": "b=wwan0",
    })
    a, b = config.links
    assert config.key_file == tmp_path / "site.key"
    assert (a.bind, a.peer, a.interface) == (("10.1.0.2", 17611), ("10.1.0.1", 17601), None)
    assert (b.bind, b.peer, b.interface) == (("127.0.0.1", 17612), ("fd00::1", 17602), "wwan0")
    master = load_bridge_config(path, "master", "", {"link_peers": "a=10.1.0.2:17611"})
    assert master.links[0].peer == ("10.1.0.2", 17611)  # the other role's side: untouched


@pytest.mark.parametrize("parameter, text, expected", [
    ("link_peers", "a:10.0.0.1:1", "bridge parameter link_peers: 'a:10.0.0.1:1' is not NAME="),
    ("link_peers", "c=10.0.0.1:1", "bridge parameter link_peers: no link 'c'"),
    ("link_binds", "a=10.0.0.1", "bridge parameter link_binds: a: '10.0.0.1' is not HOST:PORT"),
    ("link_interfaces", "a=bad/name", "bridge parameter link_interfaces: a: 'bad/name' is not"),
])
def test_bad_link_overrides_are_refused_naming_the_parameter(parameter, text, expected):
    with pytest.raises(ConfigError) as error:
        load_bridge_config(bridge_config.default_bridge_config_path(), "master", "",
                           {parameter: text})
    assert str(error.value).startswith(expected)


def assert_out_of_reach_of_accidental_binds(port: int) -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert 1024 <= port < ephemeral_low
    assert (port - 7400) % 250 >= 150  # past every domain's DDS participants' ports


def test_default_ports_are_out_of_reach_of_accidental_binds():
    """A bridge binds its link sockets after its own DDS participant opened sockets on random
    ports: a default port in the ephemeral range failed a session 'Address already in use'."""
    for role in ROLES:
        for link in load_bridge_config(default_bridge_config_path(), role).links:
            assert_out_of_reach_of_accidental_binds(link.bind[1])


@pytest.mark.parametrize(("port_kind", "hinted"), [("ephemeral", True), ("quiet", False)])
def test_a_link_port_in_use_is_refused_with_a_hint_where_it_is_in_reach(port_kind, hinted):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0 if port_kind == "ephemeral"
                    else bridge_config.free_udp_ports(1)[0]))
        port = taken.getsockname()[1]
        link = bridge_config.LinkConfig("a", ("127.0.0.1", port), ("127.0.0.1", 9), None)
        with pytest.raises(OSError) as error:
            open_link_socket(link)
    assert str(error.value).startswith(f"link a: cannot bind 127.0.0.1:{port}: Address already")
    assert ("ephemeral range" in str(error.value)) == hinted


def test_free_ports_are_distinct_free_and_out_of_reach_of_accidental_binds():
    """A port the demo picks for a bridge must not be taken before the bridge binds it: not by
    a bind to port 0 (the link emulator, DDS sending sockets), nor by a DDS participant's
    well-known port, nor by the other ports picked with it."""
    ports = bridge_config.free_udp_ports(40)
    assert len(set(ports)) == 40
    for port in ports:
        assert_out_of_reach_of_accidental_binds(port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))  # free
    # Taken ports are skipped.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", ports[0]))
        assert ports[0] not in bridge_config.free_udp_ports(2000)
