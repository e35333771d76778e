"""ROS 2 messages for telesurg: a type's class from its name, what the bridge configuration
needs to know of it (telesurg.bridge.config.MessageInfo), and pose conversions for the nodes'
hot paths.

Worst-case size. A bridged message travels in one datagram, so the bridge configuration refuses
a type whose CDR size can exceed one. The size is measured by serializing an instance filled at
a worst case: bounded fields at their bound, and unbounded ones at the realistic worst case
below (the size of a numeric field does not depend on its value).
"""

from __future__ import annotations

import functools
import importlib
import re

import numpy as np
from crtk_msgs.msg import StringStamped
from geometry_msgs.msg import Pose
from rclpy.clock import Clock
from rclpy.serialization import serialize_message
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

from telesurg.arm.rotations import homogeneous, matrix_to_quaternion, quaternion_to_matrix
from telesurg.bridge.config import MessageInfo

# Worst case assumed for unbounded fields by the size check.
STRING_CHARS = 64  # a frame_id, a state name
STRING_IN_SEQUENCE_CHARS = 32  # a joint name
SEQUENCE_ELEMENTS = 16  # the joints of an arm or a hand
# Byte arrays hold raw data (images, point clouds) of kilobytes to megabytes: 4096 bytes, a
# 64 x 64 mono8 image, is a small case of it, and already more than a datagram carries.
RAW_DATA_BYTES = 4096
_RAW_DATA_TYPES = frozenset({OCTET_TYPE, "uint8", "int8", "char"})
WORST_CASE = (f"strings of {STRING_CHARS} characters, {STRING_IN_SEQUENCE_CHARS} in arrays, "
              f"arrays of {SEQUENCE_ELEMENTS} elements, byte arrays of {RAW_DATA_BYTES}")

_TYPE_NAME = re.compile(r"(?P<package>[a-z][a-z0-9_]*)/msg/(?P<name>[A-Z][A-Za-z0-9]*)")


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


def message_info(type_name: str) -> MessageInfo:
    """What the bridge configuration needs of a type (its telesurg.bridge.config.MessageTypes);
    LookupError if there is no such type."""
    message_type = message_class(type_name)
    first_field = next(iter(message_type.get_fields_and_field_types().values()), None)
    return MessageInfo(stamped=first_field == "std_msgs/Header",
                       worst_case_bytes=worst_case_cdr_bytes(message_type),
                       worst_case=WORST_CASE)


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


def pose_to_matrix(pose: Pose) -> np.ndarray:
    o, p = pose.orientation, pose.position
    return homogeneous(quaternion_to_matrix(o.x, o.y, o.z, o.w), (p.x, p.y, p.z))


def fill_pose(pose: Pose, matrix: np.ndarray) -> Pose:
    x, y, z = matrix[:3, 3].tolist()
    pose.position.x, pose.position.y, pose.position.z = x, y, z
    o = pose.orientation
    o.x, o.y, o.z, o.w = matrix_to_quaternion(matrix[:3, :3])
    return pose


def state_command(command: str, clock: Clock) -> StringStamped:
    """A CRTK state command for /psm/state_command, stamped now by clock (the sender's)."""
    message = StringStamped(string=command)
    message.header.stamp = clock.now().to_msg()
    return message


def is_valid_stamp(stamp) -> bool:
    """CRTK: a message whose header stamp is zero carries no valid data."""
    return bool(stamp.sec or stamp.nanosec)
