# telesurg: one-command setup, demo, tests and lint.
# `make demo` and `make test` (`make test-fast`) create .venv on first use (Python 3.11, pinned
# requirements).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.telesurg-installed

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

# As root, the Debian packages that build the CRTK messages telesurg carries (cmake, a compiler,
# Python's headers) and those of the Gazebo file checks: SDFormat 12 (the parser Gazebo uses),
# whose small checker the tests build (without it those tests skip, naming the packages), and
# Mesa's EGL, with which MuJoCo renders the endoscope offscreen; Chromium and its WebDriver,
# in which the console page's tests run (without them those tests skip, naming the packages).
DEBIAN_PACKAGES := g++ cmake ninja-build python3-dev pkg-config libsdformat-dev \
	libegl1 libegl-mesa0 libgl1-mesa-dri chromium chromium-driver

# ROS 2's launch system and command line (launch, launch_ros, ros2cli...), which PyPI lacks:
# installed into .venv from this folder when it is there (its install-into builds their
# interface packages with cmake, 1-2 minutes). Without it, the demo and the tests still run;
# the tests of real `ros2 launch` runs skip, naming what is missing. Installed once: its
# install-into fails when run again on the same venv, so a venv with `ros2` keeps it (make clean
# and make setup to take a newer bundle). It runs before interfaces/install-into, which builds
# the CRTK messages telesurg carries and would otherwise leave install-into nothing to patch.
ROS2_BUNDLE ?= ../shared/ros2

$(STAMP): requirements.txt setup.py setup.cfg package.xml $(wildcard interfaces/*/msg/*.msg)
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   ! dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then \
	  apt-get update -qq && apt-get install -y -qq $(DEBIAN_PACKAGES); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) setup.py --quiet ament_layout --prefix $(VENV)
	if [ -x $(VENV)/bin/ros2 ]; then :; \
	elif [ -x "$(ROS2_BUNDLE)/install-into" ]; then "$(ROS2_BUNDLE)/install-into" $(VENV); \
	else echo "setup: no ROS 2 launch bundle at $(ROS2_BUNDLE) (ROS2_BUNDLE=...): \
	ros2 launch/run and the tests that use them are unavailable"; fi
	interfaces/install-into $(VENV)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/telesurg demo

# Test tiers (pytest markers, setup.cfg): `make test` runs ruff and then every test; `make
# test-fast` only the tests with no processes, no DDS and no root (about 35 s on 2 cores).
FAST_TESTS := not multiprocess and not root

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q test

test-fast: setup
	$(PY) -m pytest -q -m "$(FAST_TESTS)" test

bench: setup
	$(VENV)/bin/telesurg bench

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
