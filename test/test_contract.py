"""The interface contract has one home (telesurg.contract.topics): no topic name is written as a
string anywhere else in the package or its launch files, the default bridge configuration
carries exactly the contract's crossing topics with their types and QoS, and the README's topic
table is the contract's."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from telesurg.bridge.config import default_bridge_config_path
from telesurg.contract import topics
from telesurg.contract.graph import DEFAULT_LINKS
from telesurg.contract.topics import (
    MASTER_TO_PATIENT,
    PATIENT_TO_MASTER,
    SITE_LOCAL_TOPICS,
    SITES,
    TOPICS,
    Qos,
)

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "telesurg" / "contract" / "topics.py"
NAMES = {topic.name for topic in TOPICS} | SITE_LOCAL_TOPICS


def python_sources() -> list[Path]:
    return sorted([*(ROOT / "telesurg").rglob("*.py"), *(ROOT / "launch").glob("*.py")])


def topic_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in path that is a topic name."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in NAMES]


def test_no_topic_name_is_written_outside_the_contract():
    found = [f"{path.relative_to(ROOT)}:{line}: {name!r}" for path in python_sources()
             if path != CONTRACT for line, name in topic_literals(path)]
    assert not found, "topic names belong in telesurg.contract.topics:\n" + "\n".join(found)


def test_the_check_finds_a_topic_literal(tmp_path):
    offender = tmp_path / "offender.py"
    offender.write_text('PUB = node.create_publisher(Bool, "/console/clutch", 1)\n')
    assert topic_literals(offender) == [(1, "/console/clutch")]
    assert topic_literals(CONTRACT), "the contract itself names every topic"


def test_every_topic_is_well_formed_and_named_once():
    assert len({topic.name for topic in TOPICS}) == len(TOPICS)
    for topic in TOPICS:
        package, kind, name = topic.type_name.split("/")
        assert kind == "msg" and package and name[0].isupper(), topic
        assert topic.sites and set(topic.sites) <= set(SITES), topic
        assert topic.publisher, topic
        # A topic crosses only between sites that both have it, and never a site-local one.
        if topic.crossing:
            assert set(topic.sites) == set(SITES) and topic.name not in SITE_LOCAL_TOPICS


def test_streamed_commands_are_best_effort_latest_wins_and_states_reliable():
    """DESIGN.md: streamed servo commands best-effort keep-last 1; state commands reliable;
    states reliable transient-local."""
    assert topics.PSM_SERVO_CP.qos == topics.PSM_JAW_SERVO_JP.qos == Qos.COMMAND
    assert topics.PSM_STATE_COMMAND.qos == Qos.EVENT
    assert topics.PSM_OPERATING_STATE.qos == topics.CONSOLE_FOLLOWING.qos == Qos.STATE


def test_the_default_bridge_configuration_carries_the_contracts_crossing_topics():
    document = yaml.safe_load(default_bridge_config_path().read_text())
    for direction in (MASTER_TO_PATIENT, PATIENT_TO_MASTER):
        listed = [(t["name"], t["type"], t["qos"]) for t in document["topics"][direction]]
        assert listed == [(t.name, t.type_name, t.qos.value)
                          for t in topics.crossing(direction)], direction
    assert tuple(link["name"] for link in document["links"]) == DEFAULT_LINKS


def test_the_readme_topic_table_is_the_contracts():
    readme = (ROOT / "README.md").read_text()
    assert topics.markdown_table() in readme, (
        "README.md's topic table differs from the contract: paste `python -m "
        "telesurg.contract.topics`")
