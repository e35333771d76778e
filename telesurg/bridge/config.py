"""Bridge configuration: the links between the two sites and the topics that cross them.

One YAML file describes both bridges (role `master` at the surgeon's site, role `patient` at the
arm's site), so both ends read the same link order and the same topic list; each bridge takes its
own side with load_bridge_config(path, role). The whole file is checked, both roles included, so
a mistake is found on whichever machine reads it first. See config/bridge.yaml for the layout.

Topics are numbered in one list shared by both roles: master_to_patient first, then
patient_to_master, in file order. The number is the datagram's topic index (wire.py), so both
sites must use identical topic lists; likewise a link's id on the wire is its position in `links`.

Message types. A message is sent in one datagram, never fragmented, so a topic whose message
can exceed wire.max_message_bytes() in CDR is refused here rather than dropped in surgery. What a
type is, whether it exists and its worst-case size come from the caller (`message_types`:
telesurg.ros.messages.message_info on a ROS machine), so that this module stays free of rclpy.
A topic of the contract (telesurg.contract.topics) must keep the contract's type and QoS.
"""

from __future__ import annotations

import ipaddress
import random
import re
import reprlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from telesurg.bridge.link_health import LINK_TIMEOUT
from telesurg.bridge.wire import max_message_bytes
from telesurg.contract.params import ConfigError, Param, read_yaml
from telesurg.contract.resources import share_dir
from telesurg.contract.topics import (
    OUTGOING_DIRECTION,
    SITE_LOCAL_TOPICS,
    SITES,
    Qos,
    is_video_topic,
    topic_named,
)

#: The bridges' roles: one per site. Topic indices follow OUTGOING_DIRECTION's order
#: (master_to_patient first).
ROLES = SITES

# Link ids are one byte and topic indices two on the wire; the top value of each is left free.
MAX_LINKS = 254
MAX_TOPICS = 65535

HEARTBEAT_RATE = Param("heartbeat_rate_hz", 100.0,
                       "Heartbeats per second on each link, to tell which links are up.",
                       1.0, 1000.0)
# A link must survive a lost heartbeat and some jitter without being reported down.
_MIN_HEARTBEATS_PER_TIMEOUT = 3

_LINK_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # Linux IFNAMSIZ is 16 with the NUL
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})")
# ROS 2 full topic names: absolute, tokens of letters, digits and _ not starting with a digit.
_TOPIC_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class MessageInfo:
    """What the bridge configuration needs to know of a message type."""

    stamped: bool  # starts with a std_msgs/Header, whose stamp gives the message's age
    worst_case_bytes: int  # its largest realistic CDR size
    worst_case: str  # what worst case was assumed, for the error that refuses it


#: MessageInfo of a type name (package/msg/Name); LookupError, with the reason, if it has none.
MessageTypes = Callable[[str], MessageInfo]


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
    qos: Qos  # how it is published at the receiving site
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
                              "NAME a link name (e.g. a=10.1.0.2:17611)")
        if value:
            overrides[name] = value
    return overrides


def load_bridge_config(path: str | Path, role: str, key_file: str = "",
                       link_overrides: dict[str, str] | None = None, *,
                       message_types: MessageTypes, video: bool = True) -> BridgeConfig:
    """Read and check the bridge configuration file `path`; return the side of `role`.

    key_file, if not empty, replaces the file's; link_overrides maps each LINK_OVERRIDES
    parameter to its text, which replaces those parts of this site's side of the links. The
    result is checked as if the file said so, and errors name the parameter. message_types
    describes each topic's message type (see MessageTypes). Without video, the contract's
    video topics are left out (their indices stay reserved).
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
    topics = {direction: tuple(topic for topic in carried
                               if video or not is_video_topic(topic.name))
              for direction, carried in _topics(fields["topics"], path, message_types).items()}
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


def _topics(value: object, file: Path,
            message_types: MessageTypes) -> dict[str, tuple[TopicConfig, ...]]:
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
        topic = _topic(entry, file, key, index, message_types)
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


def _topic(value: object, file: Path, key: str, index: int,
           message_types: MessageTypes) -> TopicConfig:
    fields = _mapping(value, file, key, required=("name", "type", "qos"))
    name = _string(fields["name"], file, f"{key}.name")
    problem = _topic_name_problem(name)
    if problem:
        raise _error(file, f"{key}.name", f"{name!r}: {problem}")
    if name in SITE_LOCAL_TOPICS:
        raise _error(file, f"{key}.name",
                     f"{name} is published by each site itself and must not be bridged")
    type_name = _string(fields["type"], file, f"{key}.type")
    try:
        message = message_types(type_name)
    except LookupError as error:
        raise _error(file, f"{key}.type", str(error)) from None
    qos = fields["qos"]
    if qos not in tuple(Qos):
        raise _error(file, f"{key}.qos", f"must be one of {', '.join(Qos)}, got "
                                         f"{_describe(qos)}")
    # A video frame travels in fragments (telesurg.video.transport); anything else in one.
    if qos != Qos.VIDEO and message.worst_case_bytes > max_message_bytes():
        raise _error(file, f"{key}.type",
                     f"{type_name} can take {message.worst_case_bytes} bytes in CDR, more than "
                     f"the {max_message_bytes()} a datagram carries (worst case assumed: "
                     f"{message.worst_case})")
    contract = topic_named(name)
    if contract is not None:
        for field, given, expected in (("type", type_name, contract.type_name),
                                       ("qos", qos, contract.qos)):
            if given != expected:
                raise _error(file, f"{key}.{field}",
                             f"{name} is a contract topic of {field} {expected}, not {given} "
                             "(telesurg.contract.topics)")
    return TopicConfig(name, type_name, Qos(qos), index, message.stamped)


def _topic_name_problem(name: str) -> str:
    """Why name is not a valid ROS 2 full topic name, or ""."""
    if not name.startswith("/"):
        return "a topic name must be absolute (start with /)"
    if name == "/" or name.endswith("/"):
        return "a topic name must not end with /"
    bad = next((token for token in name[1:].split("/") if not _TOPIC_TOKEN.fullmatch(token)),
               None)
    if bad is not None:
        return (f"{bad!r} is not a valid name token (letters, digits and _, not starting with "
                "a digit, no empty token)")
    return ""


#: The DDS well-known ports (RTPS: 7400 + 250 x domain + 2 x participant + 0, 1, 10 or 11)
#: take the first few dozen ports of each domain's block of 250; the rest of the block is quiet.
_DDS_BASE_PORT, _DDS_DOMAIN_GAIN, _DDS_QUIET_OFFSET = 7400, 250, 150
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def quiet_udp_ports() -> list[int]:
    """UDP ports that nothing binds by accident: below the kernel's ephemeral range (a bind to
    port 0, as the link emulator's and every DDS participant's sending sockets do, never gets
    one) and away from the DDS well-known ports."""
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    return [port for block in range(_DDS_BASE_PORT, ephemeral_low, _DDS_DOMAIN_GAIN)
            for port in range(block + _DDS_QUIET_OFFSET, block + _DDS_DOMAIN_GAIN)
            if port < ephemeral_low]


def free_udp_ports(count: int) -> list[int]:
    """count distinct UDP ports on 127.0.0.1, free a moment ago, for one-machine sessions, chosen
    where no other process binds by accident (see quiet_udp_ports): they stay free until the
    bridges and relays they are meant for bind them."""
    ports: list[int] = []
    candidates = quiet_udp_ports()
    for port in random.sample(candidates, len(candidates)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        ports.append(port)
        if len(ports) == count:
            return ports
    raise OSError(f"fewer than {count} free UDP ports on 127.0.0.1 below the ephemeral range")


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
