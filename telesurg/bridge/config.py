"""Bridge configuration: the links between the two sites and the topics that cross them.

One YAML file describes both bridges (role `master` at the surgeon's site, role `patient` at the
arm's site), so both ends read the same link order and the same topic list; each bridge takes its
own side with load_bridge_config(path, role). The whole file is checked, both roles included, so
a mistake is found on whichever machine reads it first. See config/bridge.yaml for the layout.

Topics are numbered in one list shared by both roles: master_to_patient first, then
patient_to_master, in file order. The number is the datagram's topic index (wire.py), so both
sites must use identical topic lists; likewise a link's id on the wire is its position in `links`.

Size check. A message is sent in one datagram, never fragmented, so a topic whose message can
exceed wire.max_message_bytes() in CDR is refused here rather than dropped in surgery. The size is
measured by serializing an instance filled at a worst case: bounded fields at their bound, and
unbounded ones at the realistic worst case below (the size of a numeric field does not depend on
its value).
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import re
import reprlib
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml
from rclpy.exceptions import InvalidTopicNameException
from rclpy.serialization import serialize_message
from rclpy.validate_full_topic_name import validate_full_topic_name
from rosidl_parser.definition import (
    CHARACTER_TYPES,
    FLOATING_POINT_TYPES,
    OCTET_TYPE,
    AbstractGenericString,
    AbstractNestedType,
    Array,
    BasicType,
    NamespacedType,
    UnboundedSequence,
)

from telesurg.bridge.link_health import LINK_TIMEOUT
from telesurg.bridge.wire import max_message_bytes
from telesurg.contract.params import ConfigError, Param, read_yaml
from telesurg.contract.resources import share_dir

#: The topics each role sends; topic indices follow this order (master_to_patient first).
OUTGOING_DIRECTION = {"master": "master_to_patient", "patient": "patient_to_master"}
ROLES = tuple(OUTGOING_DIRECTION)

LINK_STATE_TOPIC = "/bridge/link_state"
DIAGNOSTICS_TOPIC = "/diagnostics"
# Every site publishes its own: bridged, each site would have two publishers of them.
SITE_LOCAL_TOPICS = frozenset({LINK_STATE_TOPIC, DIAGNOSTICS_TOPIC, "/rosout",
                               "/parameter_events"})

# Link ids are one byte and topic indices two on the wire; the top value of each is left free.
MAX_LINKS = 254
MAX_TOPICS = 65535

# Worst case assumed for unbounded fields by the size check.
STRING_CHARS = 64  # a frame_id, a state name
STRING_IN_SEQUENCE_CHARS = 32  # a joint name
SEQUENCE_ELEMENTS = 16  # the joints of an arm or a hand
# Byte arrays hold raw data (images, point clouds) of kilobytes to megabytes: 4096 bytes, a
# 64 x 64 mono8 image, is a small case of it, and already more than a datagram carries.
RAW_DATA_BYTES = 4096
_RAW_DATA_TYPES = frozenset({OCTET_TYPE, "uint8", "int8", "char"})

HEARTBEAT_RATE = Param("heartbeat_rate_hz", 100.0,
                       "Heartbeats per second on each link, to tell which links are up.",
                       1.0, 1000.0)
# A link must survive a lost heartbeat and some jitter without being reported down.
_MIN_HEARTBEATS_PER_TIMEOUT = 3

_LINK_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # Linux IFNAMSIZ is 16 with the NUL
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")
_TYPE_NAME = re.compile(r"(?P<package>[a-z][a-z0-9_]*)/msg/(?P<name>[A-Z][A-Za-z0-9]*)")


class QosKind(StrEnum):
    """How a bridged topic is published at the receiving site (the bridge maps it to a QoS)."""

    COMMAND = "command"  # best effort, keep last 1: the latest command wins, none is resent
    STATE = "state"  # reliable, transient local, keep last 1: late subscribers get the value
    EVENT = "event"  # reliable, volatile, keep last 10: every one must arrive


@dataclass(frozen=True)
class LinkConfig:
    name: str
    bind: tuple[str, int]  # (host, port) this site's socket binds to
    peer: tuple[str, int]  # (host, port) of the other site's socket on this link
    interface: str | None  # network interface to leave by (SO_BINDTODEVICE), None: routing


@dataclass(frozen=True)
class TopicConfig:
    name: str
    type_name: str  # e.g. geometry_msgs/msg/PoseStamped
    qos: QosKind
    index: int  # the datagram's topic index: the same at both sites
    stamped: bool = False  # starts with a std_msgs/Header, whose stamp gives the message's age


@dataclass(frozen=True)
class BridgeConfig:
    role: str
    links: tuple[LinkConfig, ...]  # in file order: a link's id on the wire is its position
    key_file: Path
    heartbeat_rate_hz: float
    link_timeout_ms: float
    outgoing: tuple[TopicConfig, ...]
    incoming: tuple[TopicConfig, ...]


def default_bridge_config_path() -> Path:
    return share_dir() / "config" / "bridge.yaml"


#: Bridge parameters that override, for this site, a part of every link in the file: each is
#: "NAME=VALUE NAME=VALUE ..." (empty VALUEs ignored), so that launch arguments can set them.
LINK_OVERRIDES = {"link_binds": "bind", "link_peers": "peer", "link_interfaces": "interface"}


def parse_link_overrides(parameter: str, text: str) -> dict[str, str]:
    """{link name: value} from a LINK_OVERRIDES parameter's text; ConfigError names it."""
    overrides = {}
    for item in text.split():
        name, equals, value = item.partition("=")
        if not equals or not _LINK_NAME.fullmatch(name):
            raise ConfigError(f"bridge parameter {parameter}: {item!r} is not NAME=VALUE with "
                              "NAME a link name (e.g. a=10.1.0.2:47101)")
        if value:
            overrides[name] = value
    return overrides


def load_bridge_config(path: str | Path, role: str, key_file: str = "",
                       link_overrides: dict[str, str] | None = None) -> BridgeConfig:
    """Read and check the bridge configuration file `path`; return the side of `role`.

    key_file, if not empty, replaces the file's; link_overrides maps each LINK_OVERRIDES
    parameter to its text, which replaces those parts of this site's side of the links. The
    result is checked as if the file said so, and errors name the parameter.
    """
    path = Path(path)
    if role not in ROLES:
        raise ConfigError(f"{path}: unknown role {role!r}: must be one of {', '.join(ROLES)}")
    document = read_yaml(path, "bridge configuration")
    if key_file and isinstance(document, dict):
        document["key_file"] = str(Path(key_file).expanduser().absolute())
    for parameter, text in (link_overrides or {}).items():
        _override_links(document, path, role, parameter, parse_link_overrides(parameter, text))
    fields = _mapping(document, path, "", required=("links", "key_file", "topics"),
                      optional=(HEARTBEAT_RATE.name, LINK_TIMEOUT.name))
    heartbeat_rate_hz = _number(HEARTBEAT_RATE, fields, path)
    link_timeout_ms = _number(LINK_TIMEOUT, fields, path)
    shortest_timeout_ms = _MIN_HEARTBEATS_PER_TIMEOUT * 1000.0 / heartbeat_rate_hz
    if link_timeout_ms < shortest_timeout_ms:
        raise _error(path, LINK_TIMEOUT.name,
                     f"{link_timeout_ms} ms is less than {_MIN_HEARTBEATS_PER_TIMEOUT} heartbeat "
                     f"periods ({shortest_timeout_ms:g} ms at {heartbeat_rate_hz:g} Hz): one lost "
                     "heartbeat would report the link down")
    topics = _topics(fields["topics"], path)
    (other_role,) = set(ROLES) - {role}
    return BridgeConfig(
        role=role,
        links=_links(fields["links"], path, role),
        key_file=_key_file(fields["key_file"], path),
        heartbeat_rate_hz=heartbeat_rate_hz,
        link_timeout_ms=link_timeout_ms,
        outgoing=topics[OUTGOING_DIRECTION[role]],
        incoming=topics[OUTGOING_DIRECTION[other_role]],
    )


def message_class(type_name: str) -> type:
    """The Python class of the ROS 2 message `type_name` (package/msg/Name); LookupError if
    there is none."""
    match = _TYPE_NAME.fullmatch(type_name)
    if match is None:
        raise LookupError(f"{type_name!r} is not a message type name: write package/msg/Name, "
                          "e.g. geometry_msgs/msg/PoseStamped")
    try:
        module = importlib.import_module(f"{match['package']}.msg")
    except ImportError:
        raise LookupError(f"unknown message type {type_name}: cannot import "
                          f"{match['package']}.msg (package not installed or not sourced)"
                          ) from None
    found = getattr(module, match["name"], None)
    if not hasattr(found, "SLOT_TYPES"):
        raise LookupError(f"unknown message type {type_name}: {match['package']}.msg has no "
                          f"message {match['name']}")
    return found


@functools.cache
def worst_case_cdr_bytes(message_type: type) -> int:
    """Serialized (CDR) size of `message_type` with bounded fields at their bound and unbounded
    ones at the worst case of this module (STRING_CHARS, SEQUENCE_ELEMENTS, ...)."""
    return len(serialize_message(_worst_case_message(message_type, in_sequence=False)))


def _worst_case_message(message_type: type, in_sequence: bool) -> object:
    message = message_type()
    for field, slot_type in zip(message_type.get_fields_and_field_types(),
                                message_type.SLOT_TYPES, strict=True):
        value = _worst_case_value(slot_type, in_sequence)
        if value is not None:
            setattr(message, field, value)
    return message


def _worst_case_value(slot_type: object, in_sequence: bool) -> object:
    """The worst-case value of a field, or None where the default is as large as any value."""
    if isinstance(slot_type, NamespacedType):
        return _worst_case_message(
            message_class("/".join((*slot_type.namespaces, slot_type.name))), in_sequence)
    if isinstance(slot_type, AbstractGenericString):
        unbounded = STRING_IN_SEQUENCE_CHARS if in_sequence else STRING_CHARS
        return "x" * (getattr(slot_type, "maximum_size", None) or unbounded)
    if not isinstance(slot_type, AbstractNestedType):
        return None  # a number: its size does not depend on its value
    element_type = slot_type.value_type
    if isinstance(element_type, BasicType):
        if isinstance(slot_type, Array):
            return None  # the default already holds every element
        element = _zero(element_type.typename)
    else:
        element = _worst_case_value(element_type, in_sequence=True)
    if isinstance(slot_type, Array):
        count = slot_type.size
    elif isinstance(slot_type, UnboundedSequence):
        raw_data = isinstance(element_type, BasicType) and element_type.typename in _RAW_DATA_TYPES
        count = RAW_DATA_BYTES if raw_data else SEQUENCE_ELEMENTS
    else:
        count = slot_type.maximum_size
    return [element] * count


def _zero(typename: str) -> object:
    """A value of the basic type `typename`, as its Python sequence setter accepts it."""
    if typename == "boolean":
        return False
    if typename == OCTET_TYPE:
        return b"\0"
    if typename in CHARACTER_TYPES:
        return "x"
    return 0.0 if typename in FLOATING_POINT_TYPES else 0


def _error(file: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


def _describe(value: object) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _mapping(value: object, file: Path, key: str, required: tuple[str, ...],
             optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _error(file, key, f"must be a mapping, got {_describe(value)}")
    known = required + optional
    prefix = f"{key}." if key else ""
    for name in value:
        if name not in known:
            raise _error(file, f"{prefix}{name}", f"unknown key (known: {', '.join(known)})")
    for name in required:
        if name not in value:
            raise _error(file, f"{prefix}{name}", "missing")
    return value


def _list(value: object, file: Path, key: str) -> list:
    if not isinstance(value, list):
        raise _error(file, key, f"must be a list, got {_describe(value)}")
    return value


def _string(value: object, file: Path, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _error(file, key, f"must be a non-empty string, got {_describe(value)}")
    return value


def _number(param: Param, fields: dict, file: Path) -> float:
    value = fields.get(param.name, param.default)
    if type(value) is int:
        value = float(value)  # `100` reads as well as `100.0` here: this is no ROS parameter
    return param.check(value, str(file))


def _key_file(value: object, file: Path) -> Path:
    key_path = Path(_string(value, file, "key_file")).expanduser()
    # Relative to the configuration, not to wherever the bridge was started from.
    return key_path if key_path.is_absolute() else file.resolve().parent / key_path


def _address(value: object, file: Path, key: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT": an IPv4 address, a host name or [IPv6 address]."""
    text = _string(value, file, key)
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise _error(file, key, f"{text!r} is not HOST:PORT (IPv6 as [ADDRESS]:PORT)")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise _error(file, key, f"port {port} in {text!r} is not in [1, 65535]")
    bracketed = match["ipv6"] is not None
    host = match["ipv6"] if bracketed else match["host"]
    if not _valid_host(host, bracketed):
        raise _error(file, key, f"{host!r} in {text!r} is not a valid host")
    return host, port


def _valid_host(host: str, bracketed: bool) -> bool:
    """An IPv6 address in brackets, else an IPv4 address or a host name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Dotted digits are a mistyped IPv4 address, never a host name.
        return (not bracketed and not host.replace(".", "").isdigit()
                and _HOSTNAME.fullmatch(host) is not None)
    return address.version == (6 if bracketed else 4)


def _links(value: object, file: Path, role: str) -> tuple[LinkConfig, ...]:
    entries = _list(value, file, "links")
    if not entries:
        raise _error(file, "links", "at least one link is needed")
    if len(entries) > MAX_LINKS:
        raise _error(file, "links", f"{len(entries)} links: at most {MAX_LINKS} fit the wire's "
                                    "one-byte link id")
    name_keys: dict[str, str] = {}
    bind_keys: dict[tuple, str] = {}
    own_side = []
    for position, entry in enumerate(entries):
        key = f"links[{position}]"
        fields = _mapping(entry, file, key, required=("name", *ROLES))
        name = _string(fields["name"], file, f"{key}.name")
        if not _LINK_NAME.fullmatch(name):
            raise _error(file, f"{key}.name", f"{name!r} must be 1 to 32 letters, digits, _ or -")
        _check_unique(name_keys, name, file, f"{key}.name", f"link name {name!r}")
        for site in ROLES:
            link = _link_side(name, fields[site], file, f"{key}.{site}")
            _check_unique(bind_keys, (site, link.bind, link.interface), file, f"{key}.{site}.bind",
                          f"address {fields[site]['bind']} on the same interface")
            if site == role:
                own_side.append(link)
    return tuple(own_side)


def _override_links(document: object, file: Path, role: str, parameter: str,
                    values: dict[str, str]) -> None:
    links = document.get("links") if isinstance(document, dict) else None
    if not isinstance(links, list):
        return  # the file's own error is reported when it is checked
    sides = {entry.get("name"): entry.get(role) for entry in links if isinstance(entry, dict)}
    source = Path(f"bridge parameter {parameter}")
    for name, value in values.items():
        side = sides.get(name)
        if not isinstance(side, dict):
            raise ConfigError(f"{source}: no link {name!r} with a {role} side in {file} "
                              f"(links: {', '.join(map(str, sides))})")
        field = LINK_OVERRIDES[parameter]
        if field == "interface":
            if not _INTERFACE_NAME.fullmatch(value):
                raise _error(source, name, f"{value!r} is not a network interface name")
        else:
            _address(value, source, name)
        side[field] = value


def _link_side(name: str, value: object, file: Path, key: str) -> LinkConfig:
    fields = _mapping(value, file, key, required=("bind", "peer"), optional=("interface",))
    peer = _address(fields["peer"], file, f"{key}.peer")
    if peer[0] in ("0.0.0.0", "::"):
        raise _error(file, f"{key}.peer", f"{peer[0]} binds to any address: a peer needs the "
                                          "address of the other site")
    interface = fields.get("interface")
    if interface is not None:
        interface = _string(interface, file, f"{key}.interface")
        if not _INTERFACE_NAME.fullmatch(interface):
            raise _error(file, f"{key}.interface", f"{interface!r} is not a network interface "
                                                   "name (1 to 15 letters, digits, _, . or -)")
    return LinkConfig(name, _address(fields["bind"], file, f"{key}.bind"), peer, interface)


def _check_unique(first_keys: dict, item: object, file: Path, key: str, what: str) -> None:
    first_key = first_keys.setdefault(item, key)
    if first_key != key:
        raise _error(file, key, f"{what} is already used by {first_key}")


def _topics(value: object, file: Path) -> dict[str, tuple[TopicConfig, ...]]:
    """{direction: topics}, indexed in the order of OUTGOING_DIRECTION."""
    directions = tuple(OUTGOING_DIRECTION.values())
    sections = _mapping(value, file, "topics", required=directions)
    listed = [(direction, position, entry) for direction in directions
              for position, entry in enumerate(_list(sections[direction], file,
                                                     f"topics.{direction}"))]
    if len(listed) > MAX_TOPICS:
        raise _error(file, "topics", f"{len(listed)} topics: at most {MAX_TOPICS} fit the "
                                     "wire's two-byte topic index")
    name_keys: dict[str, str] = {}
    topics: dict[str, list[TopicConfig]] = {direction: [] for direction in directions}
    for index, (direction, position, entry) in enumerate(listed):
        key = f"topics.{direction}[{position}]"
        topic = _topic(entry, file, key, index)
        first_key = name_keys.setdefault(topic.name, key)
        if first_key != key:
            if first_key.startswith(f"topics.{direction}["):
                problem = f"{topic.name} is listed twice (also {first_key})"
            else:
                problem = (f"{topic.name} is also in {first_key}: a topic crossing both ways "
                           "would have two publishers at each site, one local, one bridged")
            raise _error(file, f"{key}.name", problem)
        topics[direction].append(topic)
    return {direction: tuple(sent) for direction, sent in topics.items()}


def _topic(value: object, file: Path, key: str, index: int) -> TopicConfig:
    fields = _mapping(value, file, key, required=("name", "type", "qos"))
    name = _string(fields["name"], file, f"{key}.name")
    try:
        validate_full_topic_name(name)
    except InvalidTopicNameException as error:
        raise _error(file, f"{key}.name",
                     f"{name!r}: {str(error).splitlines()[0].rstrip(':')}") from None
    if name in SITE_LOCAL_TOPICS:
        raise _error(file, f"{key}.name",
                     f"{name} is published by each site itself and must not be bridged")
    type_name = _string(fields["type"], file, f"{key}.type")
    try:
        message_type = message_class(type_name)
    except LookupError as error:
        raise _error(file, f"{key}.type", str(error)) from None
    size = worst_case_cdr_bytes(message_type)
    if size > max_message_bytes():
        raise _error(file, f"{key}.type",
                     f"{type_name} can take {size} bytes in CDR, more than the "
                     f"{max_message_bytes()} a datagram carries (worst case assumed: strings "
                     f"of {STRING_CHARS} characters, {STRING_IN_SEQUENCE_CHARS} in arrays, "
                     f"arrays of {SEQUENCE_ELEMENTS} elements, byte arrays of {RAW_DATA_BYTES})")
    qos = fields["qos"]
    if qos not in tuple(QosKind):
        raise _error(file, f"{key}.qos", f"must be one of {', '.join(QosKind)}, got "
                                         f"{_describe(qos)}")
    stamped = next(iter(message_type.get_fields_and_field_types().values()), None) == (
        "std_msgs/Header")
    return TopicConfig(name, type_name, QosKind(qos), index, stamped)


def free_udp_ports(count: int) -> list[int]:
    """count UDP ports on 127.0.0.1 that were free a moment ago (for one-machine sessions)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_loopback_bridge_config(folder: Path, links, key_file: str = "bridge.key",
                                 link_timeout_ms: float | None = None) -> Path:
    """The default bridge configuration with every link on 127.0.0.1 (and link_timeout_ms if
    given), written to folder/bridge.yaml. links: per configured link, ((master bind, master
    peer), (patient bind, patient peer)) ports."""
    document = yaml.safe_load(default_bridge_config_path().read_text())
    document["key_file"] = key_file
    if link_timeout_ms is not None:
        document[LINK_TIMEOUT.name] = link_timeout_ms
    for link, ends in zip(document["links"], links, strict=True):
        for role, (bind, peer) in zip(ROLES, ends, strict=True):
            link[role] = {"bind": f"127.0.0.1:{bind}", "peer": f"127.0.0.1:{peer}"}
    path = Path(folder) / "bridge.yaml"
    path.write_text(yaml.safe_dump(document))
    return path
